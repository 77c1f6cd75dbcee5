"""d2l exercise (RegNet chapter): VioNet, networks that violate the design principles; which of d, w, g, b matters?

Each VioNet_x space is AnyNetX_E with exactly one principle broken (regnet_jax/sweep/spaces.py):
  VioNet_d  depths strictly decrease from stage to stage (AnyNetX_E: non-decreasing)
  VioNet_w  widths strictly decrease (AnyNetX_E: non-decreasing)
  VioNet_g  group widths differ between stages (AnyNetX_E: one shared g)
  VioNet_b  bottleneck ratios differ between stages (AnyNetX_E: one shared b)
AnyNetX_E itself is the reference, trained in the same sweep with the same recipe. The principle whose violation
moves the error EDF furthest from AnyNetX_E's matters most. Regime, seed and recipe come from the base sweep (the
config argument, default fashion_mnist_cpu), so the comparison runs in whichever proxy that sweep defines.

  python -m regnet_jax.sweep --config=configs/sweeps/vionet.py --plan
  python -m regnet_jax.sweep --config=configs/sweeps/vionet.py:fashion_mnist_cpu --workdir=sweeps/vionet --shard=0/2
In the fmnist_progression regime, the AnyNetX_E reference is the progression run's first 50 AnyNetX_E models (same
seeded stream, same recipe); --reuse_from records those it has finished instead of training them again:
  python -m regnet_jax.sweep --config=configs/sweeps/vionet.py:fmnist_progression \
      --workdir=docs/sweeps/vionet/run --reuse_from=docs/sweeps/fmnist_progression/run --shard=0/2
  python -m regnet_jax.sweep.analyze sweeps/vionet --out=sweeps/vionet/edf.png
More models: --config.spaces.VioNet_d.n=100 (etc.); every space samples its own seeded stream, so a larger n
extends the list and leaves the other spaces' models unchanged.
"""

from regnet_jax.config_files import sibling

MODELS_PER_SPACE = 50
SPACES = ("AnyNetX_E", "VioNet_d", "VioNet_w", "VioNet_g", "VioNet_b")


def get_config(arg: str | None = None):
  spaces = {s: {"n": MODELS_PER_SPACE} for s in SPACES}
  return sibling(__file__, "_base.py").derived(arg or "fashion_mnist_cpu", "vionet", spaces)
