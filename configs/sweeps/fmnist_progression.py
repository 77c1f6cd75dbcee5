"""The paper's design-space progression (AnyNetX_A -> B -> C -> D -> E -> RegNet) as a CPU-scale proxy.

Regime chosen by the pilot (docs/sweeps/fmnist_progression/README.md has its numbers):
- Geometry: Fashion-MNIST at 32x32 with the `cifar` stem (3x3 stride-1 conv), so the four stages run at 16, 8, 4
  and 2 pixels. The older fashion_mnist_cpu sweep used the ImageNet stem at 32x32, which left the last stage at one
  pixel, where a 3x3 conv sees no neighbourhood and the ordering principles (D, E) lose their meaning.
- Complexity: FLOPS_MF multiply-adds at that geometry (the paper's 400MF regime scaled to the machine).
- Budget: STEPS steps at batch 128 with the d2l RegNetX32 recipe (SGD Nesterov 0.9, lr 0.1 cosine with a short
  warm-up, wd 5e-4, flips), the same for every space. The pilot's evidence that rankings are stable at it:
  Spearman 0.92 between 469 and 938 steps over 24 models.

  python -m regnet_jax.sweep --config=configs/sweeps/fmnist_progression.py --plan
  for i in 0 1; do OMP_NUM_THREADS=1 python -m regnet_jax.sweep --config=configs/sweeps/fmnist_progression.py \
      --workdir=docs/sweeps/fmnist_progression/run --shard=$i/2 & done; wait
  python -m regnet_jax.sweep.analyze docs/sweeps/fmnist_progression/run --out=docs/sweeps/fmnist_progression/edf.png

The config argument `pilot` keeps everything but samples PILOT_MODELS per space: the first models of each space's
stream, which are also the first models of the full sweep (a larger n extends a smaller n's list), so the pilot's
trials at the chosen budget count towards the full run.
"""

from regnet_jax.config_files import sibling

SPACES = ("AnyNetX_A", "AnyNetX_B", "AnyNetX_C", "AnyNetX_D", "AnyNetX_E", "RegNet")
MODELS_PER_SPACE = 100
PILOT_MODELS = 4
IMAGE_SIZE = 32
FLOPS_MF = (4.0, 8.0)
STEPS = 469  # one epoch of the 60k training images at batch 128


def get_config(arg: str | None = None):
  if arg not in (None, "", "pilot"):
    raise ValueError(f"config argument {arg!r}: use none (the full sweep) or 'pilot'")
  c = sibling(__file__, "fashion_mnist_cpu.py").get_config()
  c.name = "fmnist_progression"
  c.regime.flops = (FLOPS_MF[0] * 1e6, FLOPS_MF[1] * 1e6)
  c.regime.image_size = IMAGE_SIZE
  n = PILOT_MODELS if arg == "pilot" else MODELS_PER_SPACE
  c.space_fields = {"stem_type": "cifar"}
  c.spaces = {s: {"n": n} for s in SPACES}
  t = c.train
  t.image_size = IMAGE_SIZE
  t.num_train_steps = STEPS
  t.warmup_epochs = 0.1
  t.log_every_steps = 100
  return c
