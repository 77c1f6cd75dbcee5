"""Train state and the jitted train/eval steps (the functions the trainer and `regnet_jax.bench` both run).

Everything is jit over a mesh: the state is created already sharded (`jax.eval_shape` -> shardings ->
`jax.jit(init, out_shardings=...)`), batches are global `jax.Array`s split over the data axis, and the train step
donates the state. Images travel to the device as uint8 and are normalised / resized / augmented inside the step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from regnet_jax import sharding
from regnet_jax.data import preprocess


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # per-step randomness is fold_in(rng, step): resumable and identical on any device count


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the steps need to know beyond the model: static, hashable."""

  image_size: int
  augment: str = "none"
  label_smoothing: float = 0.0
  channel_order: str = "RGB"
  # BN in inference mode while training: running statistics normalise and are left as they are (fine-tuning
  # with small per-device batches, and linear probes).
  bn_frozen: bool = False


def _to_channel_order(images, cfg: StepConfig):
  # Normalising in RGB then reversing equals pycls's BGR normalisation with BGR statistics.
  return images[..., ::-1] if cfg.channel_order == "BGR" else images


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) if label_smoothing else \
      jax.nn.one_hot(labels, num_classes)
  return optax.softmax_cross_entropy(logits, targets)


def init_state(rng, *, model, tx, info, image_size: int) -> TrainState:
  """Unsharded construction; wrap with `create_train_state` to build it directly on the mesh."""
  init_rng, state_rng = jax.random.split(rng)
  x = jnp.zeros((1, image_size, image_size, info.channels), jnp.float32)
  variables = model.init(init_rng, x, train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=state_rng)


def state_shardings(abstract_state, mesh):
  """Data parallelism: every leaf replicated over the data axis."""
  return jax.tree.map(lambda _: sharding.replicated(mesh), abstract_state)


# The init program runs once per run, but XLA:CPU's default LLVM optimisation of its random-initialiser kernels took
# 10-14 s of a short sweep trial's ~25 s of compiles (4-8 MF models, 2026-12-07); at level 0, 2.7 s (trial_cost.py).
# Its values may differ from the optimised program's in the last bit (as eager init's already do).
INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def create_train_state(rng, mesh, **kwargs) -> TrainState:
  """The train state created directly with its shardings (no host copy of the parameters)."""
  fn = functools.partial(init_state, **kwargs)
  abstract = jax.eval_shape(fn, rng)
  jitted = jax.jit(fn, out_shardings=state_shardings(abstract, mesh))
  options = INIT_COMPILER_OPTIONS.get(mesh.devices.flat[0].platform)
  if options is None:
    return jitted(rng)
  return jitted.lower(rng).compile(compiler_options=options)(rng)


def abstract_train_state(rng, mesh, **kwargs):
  """ShapeDtypeStructs with shardings: the restore target of a checkpoint."""
  abstract = jax.eval_shape(functools.partial(init_state, **kwargs), rng)
  shardings = state_shardings(abstract, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def train_step(state: TrainState, batch, *, model, tx, info, cfg: StepConfig):
  """One SGD step: on-device preprocessing, forward, backward, optimiser update, BN statistics."""
  rng = jax.random.fold_in(state.rng, state.step)
  images = _to_channel_order(preprocess.train_preprocess(batch["image"], rng, info=info, image_size=cfg.image_size,
                                                         augment=cfg.augment), cfg)
  labels = batch["label"]

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    if cfg.bn_frozen:
      logits, batch_stats = model.apply(variables, images, train=False), state.batch_stats
    else:
      logits, new_vars = model.apply(variables, images, train=True, mutable=["batch_stats"])
      batch_stats = new_vars["batch_stats"]
    loss = jnp.mean(cross_entropy(logits, labels, info.num_classes, cfg.label_smoothing))
    return loss, (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  return new_state, metrics


def eval_step(params, batch_stats, batch, *, model, info, cfg: StepConfig):
  """Sums (not means) over the real examples of a padded batch: the host adds them up over the whole split."""
  images = _to_channel_order(preprocess.eval_preprocess(batch["image"], info=info, image_size=cfg.image_size), cfg)
  logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
  mask = batch["mask"].astype(jnp.float32)
  loss = cross_entropy(logits, batch["label"], info.num_classes)
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  return {"loss_sum": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def jit_train_step(mesh, abstract_state, **kwargs) -> Callable:
  shardings = state_shardings(abstract_state, mesh)
  return jax.jit(functools.partial(train_step, **kwargs), donate_argnums=(0,),
                 in_shardings=(shardings, sharding.data_sharded(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)))


def jit_eval_step(mesh, **kwargs) -> Callable:
  rep = sharding.replicated(mesh)
  return jax.jit(functools.partial(eval_step, **kwargs), in_shardings=(rep, rep, sharding.data_sharded(mesh)),
                 out_shardings=rep)
