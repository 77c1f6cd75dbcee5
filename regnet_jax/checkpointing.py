"""Checkpoints: the only module in regnet_jax that talks to orbax.

On-disk layout of a checkpoint directory DIR (training runs and converted weights alike):

  DIR/<step>/state/                   the state pytree (orbax PyTree, OCDBT + zarr), arrays written per shard
  DIR/<step>/metadata/metadata        small JSON: config, data position, metrics so far, converter notes, ...
  DIR/<step>.orbax-checkpoint-tmp/    a save in progress, or one killed mid-write: never read, removed when a
                                      Checkpointer next opens DIR
  DIR/corrupt/<step>-<unix_time>/     a checkpoint that failed to restore, moved aside by `Checkpointer.restore`
                                      when it fell back to an older one (kept for inspection; delete at will)

Atomicity is orbax's: each step is written under `<step>.orbax-checkpoint-tmp` and renamed to `<step>` only
after every process has finished writing (on object stores without atomic rename orbax writes in place and
marks completion with `commit_success.txt`). A step directory that exists is therefore complete, whatever
moment the writer was killed at (kill -9 included).

`save_variables` writes the same layout with step 0 and state = {'params': ..., 'batch_stats': ...}.
`restore_params_only` reads the top-level `params` / `batch_stats` (or whatever keys the abstract tree has)
of the newest readable step of either kind of directory: a converted-weights directory or a training run's
checkpoint directory, whose state is the TrainState (a dataclass with those fields).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

_STATE = "state"
_METADATA = "metadata"
_CORRUPT_SUBDIR = "corrupt"
_VARIABLES_STEP = 0  # save_variables writes one checkpoint, at this step
_MAX_ERROR_CHARS = 300  # tensorstore errors embed whole JSON specs; keep log lines readable
_MAX_MISMATCH_LINES = 8


class CheckpointError(RuntimeError):
  """Base class of the errors this module raises."""


class CheckpointDirectoryError(CheckpointError):
  """The checkpoint directory cannot be created or written."""


class IncompatibleCheckpointError(CheckpointError, ValueError):
  """A readable checkpoint whose tree structure or shapes differ from the requested state."""


class CorruptCheckpointError(CheckpointError):
  """No checkpoint in the directory could be read."""


# --------------------------------------------------------------------------------------------- helpers


def _short(error: BaseException) -> str:
  text = f"{type(error).__name__}: {error}".replace("\n", " ")
  return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + " ..."


def _normalize_directory(directory: str | os.PathLike) -> str:
  directory = os.fspath(directory)
  # Object stores (gs://...) are passed through; local paths are made absolute so that log lines and error
  # messages name the real place and a later chdir cannot move the checkpoints.
  return directory if "://" in directory else os.path.abspath(directory)


def _ensure_writable_directory(directory: str) -> None:
  if "://" in directory:
    return  # no cheap probe for object stores; orbax reports the first failed write
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise CheckpointDirectoryError(
        f"cannot create checkpoint directory {directory!r}: {e}. Choose a writable --workdir.") from e
  if not os.access(directory, os.W_OK | os.X_OK):
    raise CheckpointDirectoryError(
        f"checkpoint directory {directory!r} is not writable by this user. Choose a writable --workdir.")


def _json_default(value: Any) -> Any:
  # Metrics arrive as numpy / jax scalars; JSON only knows python numbers.
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()
  raise TypeError(f"checkpoint metadata value {value!r} of type {type(value).__name__} is not JSON serializable")


def _to_json(metadata: dict | None) -> dict:
  if metadata is None:
    return {}
  if not isinstance(metadata, dict):
    raise TypeError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
  return json.loads(json.dumps(metadata, default=_json_default))


def _check_abstract(abstract: Any) -> Any:
  """Validates an abstract restore target and converts numpy scalars to what orbax accepts."""
  unsharded = []

  def check_leaf(path, leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
      unsharded.append(jax.tree_util.keystr(path))
    if isinstance(leaf, np.generic):
      return np.asarray(leaf)
    return leaf

  abstract = jax.tree_util.tree_map_with_path(check_leaf, abstract)
  if unsharded:
    # Without a sharding orbax would place arrays as they were when saved, possibly on devices that no
    # longer exist; insisting keeps restores on the mesh the caller built.
    raise ValueError(
        f"abstract state leaves need a .sharding to be restored onto; missing for {unsharded[:5]}"
        f"{' ...' if len(unsharded) > 5 else ''}. Build them as jax.ShapeDtypeStruct(shape, dtype, "
        "sharding=...) (e.g. jax.eval_shape of the jitted init with out_shardings).")
  return abstract


def _stored_shape(leaf: Any) -> tuple[int, ...]:
  """The shape a leaf of an abstract tree has on disk."""
  dtype = getattr(leaf, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    # Typed PRNG keys are written as their raw uint32 key data (one trailing axis more).
    return tuple(jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, dtype)).shape)
  return tuple(np.shape(leaf))


def _abstract_shapes(abstract: Any) -> dict[str, tuple[int, ...]]:
  return {path: _stored_shape(leaf) for path, leaf in ocp.tree.to_flat_dict(abstract, sep="/").items()}


def _checkpoint_shapes(tree_metadata: Any) -> dict[str, tuple[int, ...]]:
  flat = ocp.tree.to_flat_dict(tree_metadata, sep="/")
  # Empty nodes (None, optax EmptyState) appear as leaves without a shape; the abstract tree has none.
  return {path: tuple(m.shape) for path, m in flat.items() if getattr(m, "shape", None) is not None}


def _mismatches(expected: dict, stored: dict, *, partial: bool) -> list[str]:
  lines = [f"{p}: checkpoint has shape {stored[p]}, expected {s}"
           for p, s in expected.items() if p in stored and stored[p] != s]
  lines += [f"{p}: missing from the checkpoint" for p in expected if p not in stored]
  if not partial:
    lines += [f"{p}: in the checkpoint but not in the state" for p in stored if p not in expected]
  return lines


def _raise_if_incompatible(step_dir: str, expected: dict, stored: dict, *, partial: bool, fix: str) -> None:
  lines = _mismatches(expected, stored, partial=partial)
  if not lines:
    return
  more = f"\n  ... and {len(lines) - _MAX_MISMATCH_LINES} more" if len(lines) > _MAX_MISMATCH_LINES else ""
  raise IncompatibleCheckpointError(
      f"the checkpoint at {step_dir} was written for a different model/config "
      f"({len(lines)} differences):\n  " + "\n  ".join(lines[:_MAX_MISMATCH_LINES]) + more + f"\n{fix}")


def _all_processes_succeeded(ok: bool) -> bool:
  # Every process must take the same branch (restore this step, or fall back), or the collectives inside
  # the next restore would deadlock; a file missing on one host must demote the step everywhere.
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, dtype=np.int32))))


def _make_manager(directory: str, *, max_to_keep: int | None, read_only: bool,
                  state_handler: ocp.CheckpointHandler) -> ocp.CheckpointManager:
  if read_only:
    # Spelled out (not just read_only=True) because orbax logs a warning for each option it has to override.
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
        # The blocking part of save() is the device-to-host copy; files are written by a background thread,
        # so the state may be donated/overwritten as soon as save() returns.
        enable_async_checkpointing=True,
        # Tmp dirs of a killed save are never read; remove them so they don't pile up.
        cleanup_tmp_directories=True,
    )
  handlers = {_STATE: state_handler, _METADATA: ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, item_handlers=handlers, options=options)


def _restore_newest_readable(directory: str, steps: list[int], *, read_shapes: Callable[[int], dict],
                             check: Callable[[int, dict], None], load: Callable[[int], Any],
                             ) -> tuple[int, Any, list[int]]:
  """Tries `steps` newest first; returns (step, load(step), steps that failed before it).

  An unreadable step (metadata or data) is logged and skipped; an incompatible one raises at once, since
  older steps of the same run were written for the same model and falling back would only hide the error.
  """
  failures: list[tuple[int, str]] = []
  for step in sorted(steps, reverse=True):
    error = None
    try:
      stored = read_shapes(step)
    except Exception as e:  # pylint: disable=broad-except  # any read error means this step is unusable
      error = e
    if _all_processes_succeeded(error is None):
      check(step, stored)
      try:
        result = load(step)
      except Exception as e:  # pylint: disable=broad-except
        error = e
      if _all_processes_succeeded(error is None):
        return step, result, [s for s, _ in failures]
    reason = _short(error) if error is not None else "failed to read on another process"
    failures.append((step, reason))
    logging.warning("Checkpoint step %d in %s could not be restored (%s); falling back to the previous "
                    "checkpoint.", step, directory, reason)
  listing = "\n  ".join(f"step {s}: {r}" for s, r in failures)
  raise CorruptCheckpointError(
      f"no checkpoint in {directory} could be restored:\n  {listing}\n"
      f"To start over, delete or move {directory} away, or pass a new --workdir.")


# ----------------------------------------------------------------------------------------- Checkpointer


class Checkpointer:
  """Saves and restores (state, metadata) at integer steps in one directory; see the module docstring.

  Every process of a multi-process job must make the same calls in the same order: orbax synchronizes
  processes inside save/restore/wait, and each process writes only the shards it owns.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep={max_to_keep}; must be >= 1")
    self.directory = _normalize_directory(directory)
    _ensure_writable_directory(self.directory)
    self._manager = _make_manager(self.directory, max_to_keep=max_to_keep, read_only=False,
                                  state_handler=ocp.StandardCheckpointHandler())

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """Newest step saved. Includes a save still being written in the background: call wait() first if
    you need "complete on disk"; at start-up (nothing in flight) it is the newest complete checkpoint."""
    return self._manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """True when JAX's preemption sync point is reached (multi-host TPU/GPU): save now, then exit."""
    return self._manager.reached_preemption(step)

  def save(self, step: int, state: Any, *, metadata: dict | None = None, force: bool = False) -> None:
    """Starts saving `state` (any pytree of jax/numpy arrays and python scalars) and `metadata` at `step`.

    Returns once the arrays are copied off the devices; files are written in the background (wait()).
    There is no save interval here: the caller decides when to save. If `step` is already saved it is
    kept and nothing is written, unless `force=True`, which replaces it.
    """
    step = int(step)
    metadata = _to_json(metadata)
    if step in self._manager.all_steps():
      if not force:
        logging.info("Checkpoint for step %d already exists in %s; not saving it again.", step,
                     self.directory)
        return
      self.wait()
      self._manager.delete(step)
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state), _METADATA: ocp.args.JsonSave(metadata)})
    # force=True bypasses orbax's own save-interval policy, which would refuse steps below the latest one
    # (e.g. after falling back past a corrupt checkpoint).
    self._manager.save(step, args=args, force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int] | None:
    """Restores (state, metadata, step) onto the shardings in `abstract_state`; None if there is none.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with .sharding (numpy arrays / python scalars are
    allowed for host-side leaves). With step=None the newest readable checkpoint is used: a corrupt newer
    one is logged, moved to DIR/corrupt/ and skipped. An explicit `step` is restored or raises.
    """
    self.wait()
    self._manager.reload()  # other processes/runs may have written since this object was created
    steps = self.all_steps()
    if not steps:
      return None
    if step is not None and step not in steps:
      raise ValueError(f"no checkpoint for step {step} in {self.directory}; available steps: {steps}")
    abstract_state = _check_abstract(abstract_state)
    expected = _abstract_shapes(abstract_state)
    fix = (f"Resume with the config that wrote it, or start this config in a new --workdir "
           f"(or delete {self.directory}).")

    def check(s: int, stored: dict) -> None:
      _raise_if_incompatible(self._step_dir(s), expected, stored, partial=False, fix=fix)

    def load(s: int) -> tuple[Any, dict]:
      args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_state),
                                   _METADATA: ocp.args.JsonRestore()})
      restored = self._manager.restore(s, args=args)
      return restored[_STATE], dict(restored[_METADATA] or {})

    restored_step, (state, metadata), failed = _restore_newest_readable(
        self.directory, [step] if step is not None else steps,
        read_shapes=self._stored_shapes, check=check, load=load)
    self._quarantine(failed)
    return state, metadata, restored_step

  def wait(self) -> None:
    """Blocks until background writes are complete (and re-raises their errors)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending writes and releases orbax's threads. Safe to call twice."""
    self._manager.close()

  # -- internals

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _stored_shapes(self, step: int) -> dict:
    return _checkpoint_shapes(self._manager.item_metadata(step)[_STATE].tree)

  def _quarantine(self, steps: list[int]) -> None:
    """Moves corrupt steps aside so they are neither 'latest' nor counted by max_to_keep."""
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        target = epath.Path(self.directory) / _CORRUPT_SUBDIR / f"{step}-{int(time.time())}"
        try:
          target.parent.mkdir(parents=True, exist_ok=True)
          epath.Path(self._step_dir(step)).rename(target)
          logging.warning("Moved corrupt checkpoint %s to %s.", self._step_dir(step), target)
        except OSError as e:
          logging.warning("Could not move corrupt checkpoint %s aside (%s); deleting it.",
                          self._step_dir(step), _short(e))
          epath.Path(self._step_dir(step)).rmtree(missing_ok=True)
    if jax.process_count() > 1:  # the others must not list the steps before they are gone
      multihost_utils.sync_global_devices(f"regnet_jax.checkpointing.quarantine.{steps}")
    self._manager.reload()


# -------------------------------------------------------------------------------- weights for fine-tuning


def save_variables(directory: str | os.PathLike, variables: dict, *, metadata: dict | None) -> None:
  """Writes {'params', 'batch_stats'} (any pytree of arrays) as a standalone checkpoint at step 0.

  Readable by `restore_params_only`. Refuses a directory holding training checkpoints, whose newer steps
  would shadow (and max_to_keep=1 would delete) them.
  """
  with Checkpointer(directory, max_to_keep=1) as checkpointer:
    others = [s for s in checkpointer.all_steps() if s != _VARIABLES_STEP]
    if others:
      raise ValueError(f"{checkpointer.directory} already holds training checkpoints (steps {others}); "
                       "write converted weights to a directory of their own.")
    checkpointer.save(_VARIABLES_STEP, dict(variables), metadata=metadata, force=True)


def reinitialised_leaves(expected: dict, stored: dict, reinit_prefixes: tuple[str, ...]) -> dict[str, str]:
  """Leaves under `reinit_prefixes` that the checkpoint cannot fill (other shape, or absent): path -> why."""
  out = {}
  for path, shape in expected.items():
    if reinit_prefixes and path.startswith(reinit_prefixes):
      if path not in stored:
        out[path] = f"not in the checkpoint, model {shape}"
      elif stored[path] != shape:
        out[path] = f"checkpoint {stored[path]}, model {shape}"
  return out


def _without(abstract: Any, paths) -> Any:
  flat = ocp.tree.to_flat_dict(abstract, sep="/")
  return ocp.tree.from_flat_dict({p: v for p, v in flat.items() if p not in paths}, sep="/")


def check_params_only(directory: str | os.PathLike, abstract_variables: dict, *,
                      reinit_prefixes: tuple[str, ...] = (), fix: str | None = None) -> dict[str, str]:
  """What `restore_params_only` would do, from the newest checkpoint's metadata alone (no array is read).

  Returns the leaves it would leave to their fresh initialisation (path -> why); raises
  IncompatibleCheckpointError naming every other leaf that does not fit (then `fix`, what the caller's user
  should do), FileNotFoundError without a checkpoint. For checks before a run writes anything.
  """
  directory = _normalize_directory(directory)
  if not epath.Path(directory).exists():
    raise FileNotFoundError(f"no checkpoint directory {directory} (init_from / converted weights)")
  expected = _abstract_shapes(_check_abstract(abstract_variables))
  manager = _make_manager(directory, max_to_keep=None, read_only=True, state_handler=ocp.PyTreeCheckpointHandler())
  try:
    steps = manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {directory} (expected {directory}/<step>/state, "
                              "written by Checkpointer.save or save_variables)")
    step = max(steps)
    stored = _checkpoint_shapes(manager.item_metadata(step)[_STATE].tree)
  finally:
    manager.close()
  reinit = reinitialised_leaves(expected, stored, reinit_prefixes)
  _raise_if_incompatible(os.path.join(directory, str(step)), {p: s for p, s in expected.items() if p not in reinit},
                         stored, partial=True, fix=fix or _PARTIAL_FIX)
  return reinit


_PARTIAL_FIX = ("Pass an abstract tree without the mismatched leaves (e.g. drop the head when fine-tuning to a new "
                "number of classes), or a checkpoint of the same model.")


def restore_params_only(directory: str | os.PathLike, abstract_variables: dict, *,
                        reinit_prefixes: tuple[str, ...] = ()) -> dict:
  """Reads the top-level keys of `abstract_variables` (normally params, batch_stats) from the newest
  readable checkpoint in `directory` (a training run's checkpoints or a `save_variables` directory).

  Only the leaves present in `abstract_variables` are read: to fine-tune with a new head, leave the head out
  of the abstract tree and keep its fresh initialisation, or name it in `reinit_prefixes` (flat "/" paths,
  e.g. "params/head/"): leaves there whose stored shape differs (or that are absent) are not read, and are
  missing from the result. Every other mismatch raises. Leaves need .sharding, as for Checkpointer.restore.
  """
  directory = _normalize_directory(directory)
  if not epath.Path(directory).exists():
    raise FileNotFoundError(f"no checkpoint directory {directory} (init_from / converted weights)")
  abstract = _check_abstract(abstract_variables)
  expected = _abstract_shapes(abstract)
  # PyTreeCheckpointHandler (not Standard) because only it supports partial_restore.
  manager = _make_manager(directory, max_to_keep=None, read_only=True,
                          state_handler=ocp.PyTreeCheckpointHandler())
  reinit_at: dict[int, dict[str, str]] = {}
  try:
    steps = manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {directory} (expected {directory}/<step>/state, "
                              "written by Checkpointer.save or save_variables)")

    def read_shapes(step: int) -> dict:
      return _checkpoint_shapes(manager.item_metadata(step)[_STATE].tree)

    def check(step: int, stored: dict) -> None:
      reinit_at[step] = reinitialised_leaves(expected, stored, reinit_prefixes)
      _raise_if_incompatible(os.path.join(directory, str(step)),
                             {p: s for p, s in expected.items() if p not in reinit_at[step]}, stored, partial=True,
                             fix=_PARTIAL_FIX)

    def load(step: int) -> dict:
      target = _without(abstract, reinit_at[step]) if reinit_at[step] else abstract
      restore_args = ocp.checkpoint_utils.construct_restore_args(target)
      state_args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
      return manager.restore(step, args=ocp.args.Composite(**{_STATE: state_args}))[_STATE]

    step, variables, _ = _restore_newest_readable(directory, list(steps), read_shapes=read_shapes,
                                                  check=check, load=load)
    logging.info("Restored %s from step %d of %s.", sorted(abstract), step, directory)
    return variables
  finally:
    manager.close()
