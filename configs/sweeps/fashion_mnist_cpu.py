"""CPU-scale design-space comparison: AnyNetX_A vs AnyNetX_E vs RegNet, 20 models each, Fashion-MNIST at 32x32.

The paper's recipe (sec. 3: 500 models per space in the 400MF regime, 10 epochs at batch 128, lr 0.05) scaled to
a 2-core CPU: a narrow low-flops regime at the training resolution (32x32x1, 10 classes), and a fixed number of
steps at batch 128 with the d2l RegNetX32 recipe's optimiser (configs/regnetx32.py). Every space samples from its
own seeded stream, so adding or enlarging a space leaves the others' models unchanged.

  python -m regnet_jax.sweep --config=configs/sweeps/fashion_mnist_cpu.py --plan
  python -m regnet_jax.sweep --config=configs/sweeps/fashion_mnist_cpu.py --workdir=/tmp/sweep_fmnist
  python -m regnet_jax.sweep.analyze /tmp/sweep_fmnist --out=/tmp/sweep_fmnist/edf.png

Split across processes with --shard=I/N (each into its own --workdir, or all into one: appends are atomic lines).
"""

import importlib.util
import os

import ml_collections

IMAGE_SIZE = 32
MODELS_PER_SPACE = 20


def base_train_config() -> ml_collections.ConfigDict:
  """configs/regnetx32.py:get_config(), loaded by path (configs/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "regnetx32.py")
  spec = importlib.util.spec_from_file_location("regnetx32_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.name = "fashion_mnist_cpu"
  c.seed = 0
  c.regime = ml_collections.ConfigDict({
      "flops": (2e6, 4e6), "params": None, "acts": None,
      "image_size": IMAGE_SIZE, "channels": 1, "num_classes": 10})
  c.spaces = ml_collections.ConfigDict({
      "AnyNetX_A": {"n": MODELS_PER_SPACE},
      "AnyNetX_E": {"n": MODELS_PER_SPACE},
      "RegNet": {"n": MODELS_PER_SPACE},
  })
  t = base_train_config()
  t.image_size = IMAGE_SIZE
  t.batch_size = 128
  t.num_train_steps = 200  # 0.43 epoch of the 60k training images (~80% test accuracy for a good model)
  t.eval_batch_size = 500
  t.scan_blocks = True  # RegNets reach 60+ blocks; scanning keeps their compile time flat in depth
  t.learning_rate = 0.1
  t.warmup_epochs = 0.1
  t.eval_every_epochs = 1  # evaluates once, at the last step
  t.checkpoint_every_steps = 1000
  t.log_every_steps = 100
  t.progress_bar = False
  c.train = t
  return c
