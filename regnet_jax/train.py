"""`train_and_evaluate(config, workdir)`: the whole training job, one function (main.py only parses flags).

config -> spec -> model -> sharded state -> step -> metrics/checkpoint. Resuming is automatic: if `workdir`
holds a checkpoint, the run continues from it with the same parameters, optimiser state, BN statistics, step,
RNG and data position (the data order is a pure function of (seed, step)), so an interrupted run ends exactly
where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import signal
import threading
import time
from typing import Any, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from regnet_jax import anynet, checkpointing, optim, sharding, specs_io, steps, zoo
from regnet_jax import config as config_lib
from regnet_jax import data as data_lib
from regnet_jax import metrics_io


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """Numbers derived once from the config and the dataset."""

  steps_per_epoch: int
  num_steps: int
  eval_batch_size: int
  eval_every_steps: int
  dataset: data_lib.DatasetSpec  # resolved once: an image folder is scanned and checked here, not every epoch


def model_spec(config) -> Any:
  if config.model_spec:
    return specs_io.spec_from_json(config.model_spec)
  return zoo.get_spec(config.model)


def build_model(config, info):
  n_dev = jax.device_count()
  return anynet.build_model(
      model_spec(config), num_classes=info.num_classes, conv_impl=config.conv_impl, bn_impl=config.bn_impl,
      bn_groups=1 if config.bn_sync else n_dev, scan_blocks=config.scan_blocks,
      dtype=jnp.bfloat16 if config.half_precision else jnp.float32)


def resolve_dataset(config) -> data_lib.DatasetSpec:
  return data_lib.resolve(config.dataset, data_dir=config.data_dir or None, train_split=config.train_split,
                          eval_split=config.eval_split, channels=config.channels,
                          skip_bad_images=config.skip_bad_images)


def dataset_info(config, spec: data_lib.DatasetSpec) -> data_lib.DatasetInfo:
  """The dataset's facts, with --config.mean / --config.std in place of its default normalisation."""
  info = data_lib.dataset_info(spec, config.data_dir or None)
  if not config.mean:
    return info
  if len(config.mean) != info.channels:
    raise ValueError(f"config.mean={tuple(config.mean)!r} / config.std={tuple(config.std)!r} give "
                     f"{len(config.mean)} values, but {spec.name} has {info.channels}-channel images: give one per "
                     "channel (python -m regnet_jax.data.stats computes them)")
  return dataclasses.replace(info, mean=tuple(float(v) for v in config.mean),
                             std=tuple(float(v) for v in config.std))


def make_plan(config, info, spec: data_lib.DatasetSpec | None = None) -> RunPlan:
  spec = spec if spec is not None else resolve_dataset(config)
  spe = data_lib.TrainOrder(info.num_train, config.batch_size, seed=0).steps_per_epoch
  num_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * spe
  return RunPlan(steps_per_epoch=spe, num_steps=num_steps,
                 eval_batch_size=config.eval_batch_size or config.batch_size,
                 eval_every_steps=config.eval_every_epochs * spe, dataset=spec)


def step_config(config) -> steps.StepConfig:
  return steps.StepConfig(image_size=config.image_size, augment=config.augment,
                          label_smoothing=config.label_smoothing, channel_order=config.channel_order,
                          # A linear probe keeps the backbone as it was, its BN statistics included.
                          bn_frozen=config.bn_frozen or config.trainable == "head")


def _prefetch(iterator: Iterator[dict], mesh, depth: int = 2) -> Iterator[dict]:
  """Builds global device arrays for the next batches on a background thread while the step runs."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()
  sentinel = object()

  def worker():
    try:
      for local in iterator:
        if stop.is_set():
          return
        q.put(sharding.global_batch(local, mesh))
      q.put(sentinel)
    except BaseException as e:  # surfaced in the consumer thread
      q.put(e)

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is sentinel:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


class _Preemption:
  """SIGTERM (a TPU/GPU preemption notice) asks the loop to checkpoint at the next step boundary and exit 0."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: checkpointing at the next step boundary, then exiting")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def agreed(self) -> bool:
    """Every process stops at the same step if any of them was signalled."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
    return bool(np.any(flags))


def evaluate(eval_step, state, config, plan: RunPlan, info, mesh) -> dict[str, float]:
  """One pass over the whole eval split; padded rows are masked, so every image counts exactly once."""
  _, eval_crop = data_lib.host_crops_for(plan.dataset, config.augment)
  mesh_batches = data_lib.make_eval_batches(
      plan.dataset, data_dir=config.data_dir or None, global_batch_size=plan.eval_batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(), image_size=config.image_size,
      resize_size=config.eval_resize or None, eval_crop=eval_crop, num_workers=config.num_workers)
  totals = None
  for batch in _prefetch(mesh_batches, mesh):
    out = eval_step(state.params, state.batch_stats, batch)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  if count != info.num_eval:
    raise RuntimeError(f"evaluation saw {count:.0f} examples, the split has {info.num_eval}")
  return {"eval_loss": float(totals["loss_sum"]) / count, "eval_accuracy": float(totals["correct"]) / count,
          "eval_count": int(count)}


def _check_finite(step: int, losses: list) -> None:
  values = np.asarray(jax.device_get(losses), np.float64)
  if not np.all(np.isfinite(values)):
    bad = int(np.argmin(np.isfinite(values)))
    raise NonFiniteLossError(
        f"training loss became {values[bad]} at step {step - len(values) + bad + 1}; the run stopped and the last "
        "checkpoint (before the NaN) is intact. Lower --config.learning_rate (or raise --config.warmup_epochs) "
        "and rerun; the run resumes from that checkpoint.")


@jax.jit
def _nonfinite_leaves(tree) -> jax.Array:
  return jnp.stack([jnp.logical_not(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)])


def _check_state_finite(step: int, state) -> None:
  """A finite loss does not prove a finite state: in XLA:CPU's fused kernels ReLU can map NaN to 0 (measured: a
  state with all-NaN block weights gave finite logits under jit, NaN op by op), so a block whose parameters became
  NaN is silently switched off and the loss stays finite. Checked before every checkpoint, so no checkpoint ever
  holds NaN/Inf."""
  tree = {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state}
  bad = np.asarray(jax.device_get(_nonfinite_leaves(tree)))
  if bad.any():
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    names = [n for n, b in zip(paths, bad) if b]
    raise NonFiniteLossError(
        f"training diverged at step {step}: {len(names)} arrays of the train state hold NaN or Inf (e.g. "
        f"{', '.join(names[:3])}); the run stopped and the last checkpoint (before this step) is intact. Lower "
        "--config.learning_rate (or raise --config.warmup_epochs) and rerun; the run resumes from that checkpoint.")


def _checkpoint_metadata(config, plan: RunPlan, step: int) -> dict:
  return {"config": config.to_dict(), "step": step, "epoch": step / plan.steps_per_epoch,
          "steps_per_epoch": plan.steps_per_epoch}


# Fine-tuning to another number of classes: the classifier's tensors may differ from the checkpoint's (and are
# then re-initialised); every other tensor must match.
_CLASSIFIER_PREFIX = "params/" + "/".join(optim.CLASSIFIER_PATH) + "/"
CLASSES_FILE = "classes.json"


def init_from_directory(directory: str) -> str:
  """A training workdir names its checkpoints/ sub-folder; a checkpoints or converted-weights folder itself."""
  nested = os.path.join(directory, "checkpoints")
  return nested if os.path.isdir(nested) and not os.path.exists(os.path.join(directory, "0")) else directory


def _variables_abstract(state):
  abstract = {"params": state.params, "batch_stats": state.batch_stats}
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), abstract)


def check_init_from(config, abstract_state) -> dict[str, str]:
  """Before anything is written: does init_from fit? Returns the classifier tensors it will re-initialise."""
  prefixes = () if config.eval_only else (_CLASSIFIER_PREFIX,)  # evaluating needs the trained head
  fix = ("--config.init_from must hold weights of the same model as --config.model"
         f"{'' if config.eval_only else ' (only the classifier may differ: it is then re-initialised)'}, for "
         "images with the same number of channels (--config.channels); convert other weights with "
         "`python -m regnet_jax.weights convert`.")
  return checkpointing.check_params_only(init_from_directory(config.init_from), _variables_abstract(abstract_state),
                                         reinit_prefixes=prefixes, fix=fix)


def _init_from(state, config, reinit: dict[str, str]):
  directory = init_from_directory(config.init_from)
  restored = checkpointing.restore_params_only(directory, _variables_abstract(state),
                                               reinit_prefixes=tuple(p for p in (_CLASSIFIER_PREFIX,) if reinit))
  fresh = flax.traverse_util.flatten_dict({"params": state.params, "batch_stats": state.batch_stats}, sep="/")
  merged = {**fresh, **flax.traverse_util.flatten_dict(restored, sep="/")}
  if set(merged) != set(fresh):
    raise RuntimeError(f"init_from restored unexpected tensors {sorted(set(merged) - set(fresh))[:5]}")
  variables = flax.traverse_util.unflatten_dict(merged, sep="/")
  if reinit:
    logging.info("initialised from %s; the classifier was re-initialised for %d classes (%s); every other "
                 "tensor was loaded", directory, state.params["head"]["fc"]["bias"].shape[0],
                 "; ".join(f"{p}: {why}" for p, why in sorted(reinit.items())))
  else:
    logging.info("initialised parameters and BN statistics from %s", directory)
  return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def _check_classes(workdir: str, spec: data_lib.DatasetSpec) -> None:
  """A run resumed on other classes would silently relabel them: the workdir remembers its class list."""
  path = os.path.join(workdir, CLASSES_FILE)
  if not os.path.exists(path) or not spec.classes:
    return
  with open(path) as f:
    saved = json.load(f)
  if saved.get("classes") and list(saved["classes"]) != list(spec.classes):
    added = sorted(set(spec.classes) - set(saved["classes"]))
    missing = sorted(set(saved["classes"]) - set(spec.classes))
    raise ValueError(
        f"workdir {workdir} was started on {saved.get('dataset')} with {len(saved['classes'])} classes; "
        f"{spec.name} has {len(spec.classes)} (new: {added[:10]}, missing: {missing[:10]}"
        f"{', same names in another order' if not added and not missing else ''}). Resuming would give its labels "
        "other meanings: use the same data, or pass a new --workdir.")


def _write_classes(workdir: str, spec: data_lib.DatasetSpec) -> None:
  path = os.path.join(workdir, CLASSES_FILE)
  if not spec.classes or os.path.exists(path) or jax.process_index() != 0:
    return
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump({"dataset": spec.name, "classes": list(spec.classes)}, f, indent=1)
  os.replace(tmp, path)  # atomic: a killed run leaves the old file or the whole new one


def prepare(config: ml_collections.ConfigDict, workdir: str):
  """Everything that can fail on bad input, done before the workdir is touched."""
  config_lib.validate(config)
  spec = resolve_dataset(config)
  info = dataset_info(config, spec)
  if config.augment == "imagenet" and info.channels != 3:
    raise ValueError(f"config.augment='imagenet' adds ImageNet's RGB PCA lighting, but {spec.name} has "
                     f"{info.channels}-channel images: use --config.augment=flip, or --config.channels=3")
  plan = make_plan(config, info, spec)
  mesh = sharding.make_mesh()
  sharding.check_global_batch(config.batch_size, mesh)
  sharding.check_global_batch(plan.eval_batch_size, mesh, "eval_batch_size")
  if config.init_from and not os.path.isdir(config.init_from):
    raise FileNotFoundError(f"config.init_from={config.init_from!r} is not a directory; give the --out directory "
                            "of `python -m regnet_jax.weights convert` or a training workdir")
  _check_workdir(workdir)
  _check_classes(workdir, spec)
  return info, plan, mesh


def _check_workdir(workdir: str) -> None:
  path = os.path.abspath(workdir)
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise PermissionError(f"workdir {workdir!r} is not writable ({parent} is not a writable directory); "
                          "pass a --workdir you can write to")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or, with eval_only, evaluates) and returns the final metrics."""
  info, plan, mesh = prepare(config, workdir)
  if config.trainable == "head":
    logging.info("linear probe (trainable=head): only %s is updated; the backbone and its BN statistics are "
                 "frozen", "/".join(optim.CLASSIFIER_PATH))
  elif config.bn_frozen:
    logging.info("bn_frozen: batch norm runs in inference mode (running statistics, not updated) while training")
  model = build_model(config, info)
  tx = optim.make_optimizer(config, plan.steps_per_epoch)
  step_cfg = step_config(config)
  init_kwargs = dict(model=model, tx=tx, info=info, image_size=config.image_size)
  rng = jax.random.key(config.seed)
  abstract = steps.abstract_train_state(rng, mesh, **init_kwargs)
  eval_step = steps.jit_eval_step(mesh, model=model, info=info, cfg=step_cfg)
  reinit = check_init_from(config, abstract) if config.init_from else {}

  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:  # e.g. under /proc or on a read-only filesystem, which os.access can't tell for root
    raise PermissionError(f"cannot create workdir {workdir!r} ({e.strerror}); pass a --workdir you can write to") \
        from e
  _write_classes(workdir, plan.dataset)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
  restored = None if config.eval_only else ckpt.restore(abstract)
  if restored is not None:
    state, _, start_step = restored
    logging.info("resumed from step %d in %s", start_step, workdir)
  else:
    state = steps.create_train_state(rng, mesh, **init_kwargs)
    if config.init_from:
      state = _init_from(state, config, reinit)
    start_step = 0

  # Lines a killed run logged after its last checkpoint are dropped, so the log matches the restored state.
  writer = metrics_io.MetricsWriter(workdir, resume_step=None if config.eval_only else start_step)

  if config.eval_only:
    ev = evaluate(eval_step, state, config, plan, info, mesh)
    writer.write(int(state.step), int(state.step) / plan.steps_per_epoch, ev)
    result = {"step": int(state.step), **ev}
    writer.close()
    ckpt.close()
    logging.info(metrics_io.summary_line(result))
    print(metrics_io.summary_line(result), flush=True)
    return result

  train_step = steps.jit_train_step(mesh, abstract, model=model, tx=tx, info=info, cfg=step_cfg)
  schedule = optim.make_schedule(config, plan.steps_per_epoch)
  host_crop, _ = data_lib.host_crops_for(plan.dataset, config.augment)
  batches = data_lib.make_train_batches(
      plan.dataset, data_dir=config.data_dir or None, global_batch_size=config.batch_size, seed=config.seed,
      start_step=start_step, process_index=jax.process_index(), process_count=jax.process_count(),
      image_size=config.image_size, host_crop=host_crop, num_workers=config.num_workers)
  run = _Run(config, plan, info, mesh, train_step, eval_step, ckpt, writer, schedule)
  try:
    return _loop(run, state, start_step, _prefetch(batches, mesh))
  finally:
    # Also on errors: a checkpoint still being written in the background is completed, not lost.
    batches.close()
    writer.close()
    ckpt.close()


@dataclasses.dataclass(frozen=True)
class _Run:
  """What the loop needs besides the state and the batches."""

  config: ml_collections.ConfigDict
  plan: RunPlan
  info: Any
  mesh: Any
  train_step: Any
  eval_step: Any
  ckpt: checkpointing.Checkpointer
  writer: metrics_io.MetricsWriter
  schedule: Any


def _loop(run: _Run, state, start_step, batches):
  config, plan, ckpt, writer = run.config, run.plan, run.ckpt, run.writer
  progress = metrics_io.Progress(plan.num_steps, initial_step=start_step, images_per_step=config.batch_size,
                                 enabled=config.progress_bar)
  pending: list[dict] = []  # device metrics since the last log (not synced every step: keeps the device busy)
  unchecked: list = []  # losses not yet checked for NaN (checked before every checkpoint)
  last: dict[str, Any] = {}
  best_eval = 0.0
  t_log, n_log = time.perf_counter(), 0
  t_start = time.perf_counter()
  step = start_step

  def save(force=False):
    _check_finite(step, unchecked)
    unchecked.clear()
    _check_state_finite(step, state)
    ckpt.save(step, state, metadata=_checkpoint_metadata(config, plan, step), force=force)

  with _Preemption() as preemption:
    while step < plan.num_steps:
      state, metrics = run.train_step(state, next(batches))
      step += 1
      pending.append(metrics)
      unchecked.append(metrics["loss"])
      n_log += 1
      progress.update(1, **({"loss": last["train_loss"]} if "train_loss" in last else {}))
      if step % config.log_every_steps == 0 or step == plan.num_steps:
        host = jax.device_get(pending)
        pending.clear()
        losses = np.array([m["loss"] for m in host])
        _check_finite(step, unchecked)
        unchecked.clear()
        dt = time.perf_counter() - t_log
        _check_state_finite(step, state)  # after dt: not counted as training time
        logged = dict(train_loss=float(losses.mean()), train_accuracy=float(np.mean([m["accuracy"] for m in host])),
                      learning_rate=float(run.schedule(step - 1)),
                      **{metrics_io.IMAGES_PER_SEC_KEY: n_log * config.batch_size / dt})
        last.update(logged)
        writer.write(step, step / plan.steps_per_epoch, logged)  # not `last`: its eval keys are from an older step
        t_log, n_log = time.perf_counter(), 0
      if step % plan.eval_every_steps == 0 or step == plan.num_steps:
        ev = evaluate(run.eval_step, state, config, plan, run.info, run.mesh)
        best_eval = max(best_eval, ev["eval_accuracy"])
        last.update(ev, best_eval_accuracy=best_eval)
        writer.write(step, step / plan.steps_per_epoch, {**ev, "best_eval_accuracy": best_eval})
        t_log, n_log = time.perf_counter(), 0  # eval time is not training throughput
      if step % config.checkpoint_every_steps == 0 or step == plan.num_steps:
        save()
      if preemption.agreed():
        save(force=True)
        ckpt.wait()
        progress.close()
        logging.warning("preempted: checkpoint at step %d written; rerun the same command to resume", step)
        return {"step": step, "preempted": True, **last}
  ckpt.wait()
  progress.close()
  last.update(step=step, epoch=step / plan.steps_per_epoch,
              **{metrics_io.WALL_TIME_KEY: time.perf_counter() - t_start})
  if jax.process_index() == 0:
    png = metrics_io.plot_training_curves(writer.path, os.path.join(os.path.dirname(writer.path),
                                                                    "training_curves.png"))
  line = metrics_io.summary_line(last)
  logging.info(line)
  if jax.process_index() == 0:
    print(f"{line}\ntraining curves: {png}", flush=True)
    last["plot"] = png
  return last


# Errors caused by the user's input or environment (bad config, missing data, unwritable workdir, NaN loss with
# this learning rate, corrupt or incompatible checkpoint): main.py reports them in one line and exits non-zero.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, PermissionError, NonFiniteLossError,
               checkpointing.CheckpointError)
