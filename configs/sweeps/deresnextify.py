"""d2l exercise (RegNet chapter): "de-ResNeXt-ify": basic residual blocks instead of bottleneck X blocks.

AnyNet_E_basic and RegNet_basic are AnyNetX_E and RegNet with the X block (1x1, grouped 3x3, 1x1 with bottleneck
ratio b and group width g) replaced by the basic residual block (3x3, 3x3; regnet_jax/layers.py BasicBlock), so b
and g disappear from the space. Both X-block spaces train in the same sweep as references, at the same flops
regime, seed and recipe, taken from the base sweep (the config argument, default fashion_mnist_cpu).

  python -m regnet_jax.sweep --config=configs/sweeps/deresnextify.py --plan
  python -m regnet_jax.sweep --config=configs/sweeps/deresnextify.py --workdir=sweeps/deresnextify --shard=0/2
In the fmnist_progression regime the two X-block references are the progression run's first 50 AnyNetX_E and
RegNet models; --reuse_from records those it has finished instead of training them again:
  python -m regnet_jax.sweep --config=configs/sweeps/deresnextify.py:fmnist_progression \
      --workdir=docs/sweeps/deresnextify/run --reuse_from=docs/sweeps/fmnist_progression/run --shard=0/2
  python -m regnet_jax.sweep.analyze sweeps/deresnextify --out=sweeps/deresnextify/edf.png
"""

from regnet_jax.config_files import sibling

MODELS_PER_SPACE = 50
SPACES = ("AnyNetX_E", "AnyNet_E_basic", "RegNet", "RegNet_basic")


def get_config(arg: str | None = None):
  spaces = {s: {"n": MODELS_PER_SPACE} for s in SPACES}
  return sibling(__file__, "_base.py").derived(arg or "fashion_mnist_cpu", "deresnextify", spaces)
