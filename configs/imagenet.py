"""ImageNet with the paper's recipe (pycls configs/dds_baselines), for any zoo model:

  python -m regnet_jax.main --config=configs/imagenet.py:regnetx_3.2gf --workdir=DIR

SGD, Nesterov momentum 0.9, weight decay 5e-5 on every parameter, lr 0.1 * batch / 128, cosine set once per
epoch, 5 warm-up epochs from factor 0.1, 100 epochs, no label smoothing, fp32, per-device BN statistics.
Train: inception crop 224 + flip + PCA lighting 0.1; eval: resize shorter side 256, centre crop 224.
Change the global batch with --config.batch_size (the learning rate follows unless you also set it).
"""

from regnet_jax.config import base_config

REFERENCE_LR = 0.1
REFERENCE_BATCH = 128
DEFAULT_BATCH = 1024  # pycls used 1024 (8 GPUs) for the models up to 1.6GF, 512 / 256 for the big ones


def get_config(arg: str | None = None):
  c = base_config()
  c.model = arg or "regnetx_1.6gf"
  c.dataset = "imagenet2012"
  c.image_size = 224
  c.eval_resize = 256
  c.augment = "imagenet"
  c.batch_size = DEFAULT_BATCH
  # A reference, so `--config.batch_size=N` rescales the learning rate too (override it to pin it).
  del c["learning_rate"]  # a float field cannot be assigned a reference in place
  c.learning_rate = c.get_ref("batch_size") * (REFERENCE_LR / REFERENCE_BATCH)
  c.num_epochs = 100
  c.lr_schedule = "cosine"
  c.warmup_epochs = 5.0
  c.warmup_factor = 0.1
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 5e-5
  c.bn_sync = False
  c.num_workers = 16
  c.checkpoint_every_steps = 1000
  c.log_every_steps = 100
  return c
