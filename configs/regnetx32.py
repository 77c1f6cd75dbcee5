"""d2l "Designing Convolution Network Architectures": RegNetX32 on Fashion-MNIST resized to 96x96, batch 128,
10 epochs.

d2l trains with plain SGD at lr 0.05 and reaches ~89.5% (measured in PyTorch on this kind of machine). We keep
the model, data, resolution, batch and epochs and change only the optimiser, to the pycls recipe at this scale:
SGD with Nesterov momentum 0.9 (momentum roughly 10x the effective step at the same lr, so lr 0.1 here is a
moderate rate), cosine decay set per epoch so the last epochs run at a small rate (this is where most of the final
accuracy comes from), one warm-up epoch because BN statistics are still poor at step 0, weight decay 5e-4
(the small-dataset value; 5e-5 is ImageNet's) and random horizontal flips (clothes are left/right symmetric).
"""

from regnet_jax.config import base_config


def get_config(arg: str | None = None):
  del arg
  c = base_config()
  c.model = "regnetx32"
  c.dataset = "fashion_mnist"
  c.image_size = 96
  c.batch_size = 128
  c.num_epochs = 10
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 5e-4
  c.warmup_epochs = 1.0
  c.augment = "flip"
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 200
  c.log_every_steps = 50
  return c
