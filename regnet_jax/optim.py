"""Optimiser and learning-rate schedule, pycls style.

pycls sets the learning rate once per epoch: lr(e) = base * cos_factor(e) * warmup(e) with e the integer epoch,
cos_factor(e) = 0.5 * (1 + cos(pi * e / num_epochs)) and, for e < warmup_epochs, warmup(e) = f * (1 - a) + a with
a = e / warmup_epochs and f the warm-up factor. SGD follows PyTorch: coupled L2 weight decay on every parameter
(added to the gradient), momentum with dampening 0, optional Nesterov. optax's `trace` does exactly PyTorch's
update, so the chain below reproduces torch.optim.SGD step for step.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "constant")


def epoch_learning_rate(epoch, *, base_lr: float, num_epochs: int, warmup_epochs: float = 0.0,
                        warmup_factor: float = 0.1, schedule: str = "cosine", min_lr: float = 0.0):
  """pycls `get_epoch_lr`; `epoch` is the integer epoch (python number or jnp array). `min_lr` is relative."""
  if schedule == "cosine":
    factor = 0.5 * (1.0 + jnp.cos(math.pi * epoch / num_epochs))
    factor = (1.0 - min_lr) * factor + min_lr
  elif schedule == "constant":
    factor = jnp.ones_like(jnp.asarray(epoch, jnp.float32))
  else:
    raise ValueError(f"unknown lr schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
  lr = base_lr * factor
  if warmup_epochs > 0:
    alpha = epoch / warmup_epochs
    warm = warmup_factor * (1.0 - alpha) + alpha
    lr = jnp.where(epoch < warmup_epochs, lr * warm, lr)
  return lr


def make_schedule(config, steps_per_epoch: int):
  """step -> learning rate.

  With `num_train_steps == -1` (train for `num_epochs`), pycls's rule: the rate is constant within an epoch
  (epoch = floor(step / steps_per_epoch)). With a fixed `num_train_steps` (short sweeps, tests) the run may not
  be a whole number of epochs, so the same curve is followed continuously over the steps and reaches its end at
  the last step.
  """
  fixed_steps = config.num_train_steps > 0
  num_epochs = config.num_train_steps / steps_per_epoch if fixed_steps else config.num_epochs
  kwargs = dict(base_lr=config.learning_rate, num_epochs=num_epochs, warmup_epochs=config.warmup_epochs,
                warmup_factor=config.warmup_factor, schedule=config.lr_schedule, min_lr=config.min_lr)
  epoch_learning_rate(0, **kwargs)  # validates the schedule name eagerly, before any tracing

  def schedule(step):
    epoch = step / steps_per_epoch if fixed_steps else jnp.floor_divide(step, steps_per_epoch)
    return epoch_learning_rate(epoch, **kwargs)

  return schedule


# The classifier: what `trainable=head` (a linear probe) updates, and what fine-tuning re-initialises.
CLASSIFIER_PATH = ("head", "fc")


def is_classifier(path: tuple[str, ...]) -> bool:
  return tuple(path[:len(CLASSIFIER_PATH)]) == CLASSIFIER_PATH


def trainable_labels(params) -> Any:
  """"train" for the classifier's leaves, "frozen" for every other (for optax.multi_transform)."""
  def label(path, _):
    return "train" if is_classifier(tuple(getattr(k, "key", k) for k in path)) else "frozen"
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """pycls's SGD; with trainable=head only the classifier is updated (no momentum or decay for the rest)."""
  schedule = make_schedule(config, steps_per_epoch)
  tx = optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov),
  )
  if config.get("trainable", "all") == "head":
    # set_to_zero's updates do not depend on the gradients, so XLA drops the backbone's backward pass.
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, trainable_labels)
  return tx
