"""CIFAR-10 with pycls's CIFAR recipe (configs/archive/cifar): 32x32, batch 128, lr 0.1, Nesterov, wd 5e-4,
cosine over 200 epochs, pad-and-crop + flip. The model is any zoo name (`--config=configs/cifar10.py:regnety_200mf`,
default the d2l RegNetX32); the ImageNet stem downsamples 32x32 input twice as fast as pycls's CIFAR stem, so use
`cifar` stems in custom specs for best accuracy.
"""

from regnet_jax.config import base_config


def get_config(arg: str | None = None):
  c = base_config()
  c.model = arg or "regnetx32"
  c.dataset = "cifar10"
  c.image_size = 32
  c.batch_size = 128
  c.num_epochs = 200
  c.learning_rate = 0.1
  c.weight_decay = 5e-4
  c.warmup_epochs = 0.0
  c.augment = "crop_flip"
  c.checkpoint_every_steps = 1000
  c.log_every_steps = 100
  return c
