"""The training configuration: every field, its default, and validation before anything is written.

Config files in `configs/` start from `base_config()` and change fields; `validate` rejects impossible values
with a message naming the field, the value and what is allowed. The dict is locked, so a misspelt override
(`--config.learning_rat=0.1`) fails instead of silently adding a field.
"""

from __future__ import annotations

import ml_collections

from regnet_jax import specs_io, zoo
from regnet_jax.optim import SCHEDULES

DATASETS = ("fashion_mnist", "cifar10", "imagenet2012")
DATASET_PREFIXES = ("folder:", "tfds:")  # your own data: an image folder, any prepared TFDS dataset
TRAINABLES = ("all", "head")
AUGMENTS = ("none", "flip", "crop_flip", "imagenet")
CHANNEL_ORDERS = ("RGB", "BGR")
CONV_IMPL_DEFAULT = "auto"


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Model.
  c.model = "regnetx32"  # a zoo name (python -m regnet_jax.zoo)
  c.model_spec = ""  # JSON of an AnyNetSpec (design-space sweeps); overrides `model` when set
  c.conv_impl = CONV_IMPL_DEFAULT  # regnet_jax.convs: xla (reference) or a faster equal formulation; auto picks
  c.bn_impl = "auto"  # regnet_jax.batchnorm_cpu: xla, or native (fused BN+add+ReLU kernels on the CPU); auto picks
  c.scan_blocks = False  # nn.scan over identical blocks: compile time flat in depth
  c.half_precision = False  # bf16 compute, f32 parameters and optimiser state
  c.bn_sync = True  # True: BN statistics over the global batch; False: per device (pycls)
  # Data.
  c.dataset = "fashion_mnist"  # a built-in name, folder:PATH (PATH/train/CLASS/*.png ...) or tfds:NAME[:VERSION]
  c.data_dir = ""  # IDX files or a TFDS data_dir; "" = defaults (Debian package location, ~/tensorflow_datasets)
  c.train_split = ""  # "" = the dataset's own (folders: train; TFDS: train)
  c.eval_split = ""  # "" = the dataset's own (folders: val; TFDS: validation, else test)
  c.channels = 0  # 0 = from the data (folders: grey if the images are); 1 or 3 converts
  c.mean = ()  # per-channel normalisation in [0, 255] units; () = the dataset's (ImageNet's for your own data)
  c.std = ()  # see `python -m regnet_jax.data.stats DATASET` to compute both
  c.skip_bad_images = False  # image folders: leave undecodable files out (counted in the log) instead of failing
  c.image_size = 96
  c.augment = "none"
  c.eval_resize = 0  # imagenet eval: resize shorter side to this, then centre crop image_size; 0 = image_size*256/224
  c.channel_order = "RGB"  # what the model's stem sees; "BGR" for pycls weights converted without --rgb_input
  c.num_workers = 0  # grain worker processes for host decoding (ImageNet)
  # Optimisation (pycls defaults, see regnet_jax/optim.py).
  c.batch_size = 128  # global, over all devices and hosts
  c.eval_batch_size = 0  # 0 = batch_size
  c.num_epochs = 10
  c.num_train_steps = -1  # -1: num_epochs * steps per epoch
  c.learning_rate = 0.1
  c.lr_schedule = "cosine"
  c.min_lr = 0.0  # relative to learning_rate
  c.warmup_epochs = 0.0
  c.warmup_factor = 0.1
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 5e-5
  c.label_smoothing = 0.0
  # Bookkeeping.
  c.seed = 0
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.log_every_steps = 50
  c.eval_only = False
  c.init_from = ""  # a converted-weights or checkpoint directory to start from (fine-tuning, eval_only)
  c.trainable = "all"  # all, or head: a linear probe (only the classifier learns; BN statistics frozen)
  c.bn_frozen = False  # BN in inference mode while training (running statistics used and kept): small batches
  c.progress_bar = True
  return c


def _fail(field, value, allowed):
  raise ValueError(f"config.{field}={value!r} is invalid: {allowed}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Raise ValueError naming the first bad field. Called before the workdir is touched."""
  if c.model_spec:
    specs_io.spec_from_json(c.model_spec)
  else:
    zoo.get_spec(c.model)
  if c.dataset not in DATASETS and not c.dataset.startswith(DATASET_PREFIXES):
    _fail("dataset", c.dataset, f"one of {', '.join(DATASETS)}, or folder:PATH (an image folder) or "
          "tfds:NAME[:VERSION] (a prepared TFDS dataset)")
  if c.trainable not in TRAINABLES:
    _fail("trainable", c.trainable, f"one of {', '.join(TRAINABLES)}")
  if c.channels not in (0, 1, 3):
    _fail("channels", c.channels, "0 (from the data), 1 or 3")
  if bool(c.mean) != bool(c.std) or len(c.mean) != len(c.std):
    _fail("mean", c.mean, f"give --config.mean and --config.std together, one value per channel (std={c.std!r})")
  if any(not v > 0 for v in c.std):
    _fail("std", c.std, "every value must be > 0")
  if c.augment not in AUGMENTS:
    _fail("augment", c.augment, f"one of {', '.join(AUGMENTS)}")
  if c.channel_order not in CHANNEL_ORDERS:
    _fail("channel_order", c.channel_order, f"one of {', '.join(CHANNEL_ORDERS)}")
  if c.lr_schedule not in SCHEDULES:
    _fail("lr_schedule", c.lr_schedule, f"one of {', '.join(SCHEDULES)}")
  positive = ("image_size", "batch_size", "num_epochs", "checkpoint_every_steps", "log_every_steps",
              "eval_every_epochs", "keep_checkpoints")
  for f in positive:
    if c[f] < 1:
      _fail(f, c[f], "must be >= 1")
  for f in ("eval_batch_size", "num_workers", "eval_resize", "seed"):
    if c[f] < 0:
      _fail(f, c[f], "must be >= 0")
  if c.num_train_steps == 0 or c.num_train_steps < -1:
    _fail("num_train_steps", c.num_train_steps, "must be -1 (from num_epochs) or >= 1")
  if not c.learning_rate > 0 or c.learning_rate != c.learning_rate:
    _fail("learning_rate", c.learning_rate, "must be > 0")
  for f, lo, hi in (("momentum", 0.0, 1.0), ("weight_decay", 0.0, 1.0), ("label_smoothing", 0.0, 1.0),
                    ("warmup_factor", 0.0, 1.0), ("min_lr", 0.0, 1.0)):
    if not lo <= c[f] <= hi:
      _fail(f, c[f], f"must be in [{lo}, {hi}]")
  if c.momentum == 0 and c.nesterov:
    _fail("nesterov", c.nesterov, "Nesterov needs momentum > 0")
  if not 0 <= c.warmup_epochs <= c.num_epochs:
    _fail("warmup_epochs", c.warmup_epochs, f"must be in [0, num_epochs={c.num_epochs}]")
  from regnet_jax import convs
  if c.conv_impl != "auto" and c.conv_impl not in convs.CONV_IMPLS:
    _fail("conv_impl", c.conv_impl, f"one of auto, {', '.join(convs.CONV_IMPLS)}")
  from regnet_jax import batchnorm_cpu
  if c.bn_impl != "auto" and c.bn_impl not in batchnorm_cpu.BN_IMPLS:
    _fail("bn_impl", c.bn_impl, f"one of auto, {', '.join(batchnorm_cpu.BN_IMPLS)}")
  if c.eval_only and not c.init_from:
    _fail("eval_only", c.eval_only, "needs --config.init_from=DIR with weights to evaluate")
