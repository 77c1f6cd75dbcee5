"""Run a sweep: sample its trials, train each with the sweep's short recipe, record one line per finished trial.

A sweep config (ml_collections, see configs/sweeps/) holds:
  name     the sweep's name (recorded in every line; results of other sweeps in the same file are ignored)
  seed     sampling seed
  regime   flops / params / acts bounds ((low, high) or None) and the input geometry image_size, channels,
           num_classes at which complexity is measured
  spaces   ordered {space name: {n: models, [base | kind, space field overrides]}} (see spaces.space_from_dict)
  space_fields  optional {space field: value} set on every space before its own overrides (e.g. stem_type), so
           a regime's geometry is stated once and exercise sweeps derived from the config inherit it
  train    the training config every trial starts from; each trial sets `train.model_spec`
  reuse    optional {sweep: name, train_fingerprint: hex}: this sweep's trials may take their result from a trial
           of sweep `name` (in the workdirs passed as reuse_from) that trained the same model with the same recipe,
           instead of training it again (the exercise sweeps set it for their reference spaces; see
           `reusable_records`)

Trial i (global index, spaces in config order) belongs to shard i % N; a shard trains its trials round-robin over
the spaces (`round_robin`), so a partial sweep is balanced. Reruns skip trials already recorded, so a
crashed or preempted sweep resumes where it stopped, and shards in separate directories merge by reading them all.
How each trial is trained (in this process or in a child per trial) is the TrainFn's business: see trials.py.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from regnet_jax.sweep.results import append_record, read_records, results_path
from regnet_jax.sweep.sampling import Regime, Sample, sample_space
from regnet_jax.sweep.spaces import space_from_dict
from regnet_jax.specs_io import regnet_to_dict, spec_to_dict, spec_to_json

TrainFn = Callable[[Any, str], Mapping[str, Any]]
FAILURES_FILE = "failures.jsonl"  # one line per failed attempt (on_error="skip"); never read back by the runner
ON_ERROR = ("stop", "skip")


class SweepError(ValueError):
  """A sweep config or workdir that cannot be run as asked."""


@dataclasses.dataclass(frozen=True)
class Shard:
  index: int = 0
  count: int = 1

  def __post_init__(self):
    if not (self.count >= 1 and 0 <= self.index < self.count):
      raise SweepError(f"shard {self.index}/{self.count} is invalid: need N >= 1 and 0 <= I < N (e.g. --shard=0/4)")

  def owns(self, trial_index: int) -> bool:
    return trial_index % self.count == self.index


def parse_shard(text: str) -> Shard:
  """'I/N' -> Shard(I, N)."""
  try:
    i, n = (int(p) for p in str(text).split("/"))
  except ValueError:
    raise SweepError(f"--shard={text!r} must look like I/N, e.g. 0/4 (shard I of N, 0-based)") from None
  return Shard(i, n)


@dataclasses.dataclass(frozen=True)
class Trial:
  index: int  # global position in the sweep; decides the shard
  trial_id: str  # '<space>-<k>' with k the model's position within its space
  sample: Sample


def regime_from_config(config) -> Regime:
  r = config.regime
  bounds = {k: (tuple(r[k]) if r.get(k) is not None else None) for k in ("flops", "params", "acts")}
  return Regime(**bounds, image_size=int(r.image_size), channels=int(r.channels), num_classes=int(r.num_classes))


def plan_trials(config) -> tuple[Trial, ...]:
  """Every trial of the sweep, deterministically from the config (same config, same trials, same order)."""
  regime = regime_from_config(config)
  train_size = config.train.get("image_size") if "train" in config else None
  if train_size is not None and int(train_size) != regime.image_size:
    raise SweepError(f"regime.image_size={regime.image_size} differs from train.image_size={train_size}: "
                     "complexity must be measured at the size the models train at; set both to the same value")
  shared = dict(config.space_fields.items()) if config.get("space_fields") is not None else {}
  trials = []
  for name, entry in config.spaces.items():
    entry = {**shared, **dict(entry.items())}
    if "n" not in entry or int(entry["n"]) < 1:
      raise SweepError(f"spaces.{name} needs n >= 1 (models to sample), got {entry.get('n')!r}")
    space = space_from_dict(name, entry)
    for k, sample in enumerate(sample_space(space, int(entry["n"]), regime, int(config.seed))):
      trials.append(Trial(len(trials), f"{name}-{k:03d}", sample))
  return tuple(trials)


def round_robin(trials) -> list[Trial]:
  """Trials in the order a sweep trains them: the first model of every space, then the second of every space, ...
  so a sweep stopped part-way (one that spans sessions) has compared all its spaces on nearly equal numbers of
  models, instead of having finished the first spaces only. Which shard owns a trial does not change."""
  position, seen, order = {}, {}, {}
  for t in sorted(trials, key=lambda t: t.index):
    order.setdefault(t.sample.space, len(order))
    position[t.index] = seen.get(t.sample.space, 0)
    seen[t.sample.space] = position[t.index] + 1
  return sorted(trials, key=lambda t: (position[t.index], order[t.sample.space]))


def trial_train_config(train_config, sample: Sample):
  """The sweep's training config with `model_spec` (JSON, see specs_io) set to the sampled model; the base config
  is not modified."""
  cfg = copy.deepcopy(train_config)
  cfg.model_spec = spec_to_json(sample.spec)
  return cfg


def error_percent(accuracy) -> float:
  return 100.0 * (1.0 - float(accuracy))


def train_fingerprint(train_config) -> str:
  """A short hash of everything in the training config but the model: two sweeps whose trials train the same
  model_spec under equal fingerprints ran the same recipe, so one's measurement stands for the other's."""
  d = train_config.to_dict() if hasattr(train_config, "to_dict") else dict(train_config)
  d.pop("model_spec", None)
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def make_record(config, trial: Trial, metrics: Mapping[str, Any], seconds: float) -> dict[str, Any]:
  s = trial.sample
  final = metrics["eval_accuracy"]
  best = metrics.get("best_eval_accuracy", final)
  scalars = {}
  for k, v in metrics.items():
    try:
      scalars[k] = float(v)
    except (TypeError, ValueError):
      continue
  return {
      "sweep": config.name, "trial": trial.trial_id, "index": trial.index, "space": s.space,
      "spec": spec_to_dict(s.spec), "regnet": regnet_to_dict(s.regnet) if s.regnet is not None else None,
      "flops": s.flops, "params": s.params, "acts": s.acts,
      # What makes the trial reproducible besides the spec: the sampling seed, the training seed and budget.
      "seed": int(config.seed), "train_seed": int(config.train.get("seed", 0)),
      "train_steps": int(metrics.get("step", config.train.get("num_train_steps", -1))),
      "batch_size": int(config.train.get("batch_size", 0)),
      "final_error": error_percent(final), "best_error": error_percent(best),
      "seconds": round(seconds, 3), "metrics": scalars, "host": socket.gethostname(), "finished_at": time.time(),
      "train_fingerprint": train_fingerprint(config.train),
  }


def reusable_records(config, reuse_from: Sequence[str], log: Callable[[str], None] = logging.info
                     ) -> dict[tuple, tuple[str, dict[str, Any]]]:
  """{(spec JSON, sampling seed): (workdir, record)} of finished trials that this sweep may take over.

  Only when the config declares `reuse` (sweep name and the training recipe's fingerprint, fixed when the config was
  built) and its training config still has that fingerprint: a command-line override of the recipe (another budget,
  say) makes the reference trials a different experiment, so nothing is reused and every trial trains. A record must
  also agree on what it states itself: seed, training seed, steps, batch size and, where recorded, fingerprint.
  """
  if not reuse_from:
    return {}
  reuse = config.get("reuse")
  if reuse is None:
    raise SweepError(f"sweep {config.name!r} declares no `reuse` (reference sweep and recipe fingerprint), so "
                     "--reuse_from cannot know which trials stand for its own; drop --reuse_from")
  mine = train_fingerprint(config.train)
  if mine != reuse.train_fingerprint:
    log(f"sweep {config.name}: its training config differs from sweep {reuse.sweep!r}'s (fingerprint {mine} vs "
        f"{reuse.train_fingerprint}: a command-line override?), so no trial is reused; every trial trains")
    return {}
  t = config.train
  want = {"seed": int(config.seed), "train_seed": int(t.get("seed", 0)), "batch_size": int(t.get("batch_size", 0))}
  if t.get("num_train_steps") is not None:  # otherwise the steps follow from epochs, covered by the fingerprint
    want["train_steps"] = int(t.num_train_steps)
  found = {}
  for workdir in reuse_from:
    path = results_path(workdir)
    if not os.path.exists(path):
      raise SweepError(f"--reuse_from={workdir}: no {path}; pass the workdir of a run of sweep {reuse.sweep!r}")
    for r in read_records(path):
      if r.get("sweep") != reuse.sweep or r.get("reused_from") is not None:
        continue
      if any(r.get(k) != v for k, v in want.items()) or r.get("train_fingerprint", mine) != mine:
        continue
      found.setdefault((json.dumps(r["spec"], sort_keys=True), r["seed"]), (workdir, r))
  return found


def reused_record(config, trial: Trial, workdir: str, source: Mapping[str, Any]) -> dict[str, Any]:
  """The reference trial's record as one of this sweep's, naming where it came from."""
  r = dict(source)
  r.update({"sweep": config.name, "trial": trial.trial_id, "index": trial.index, "space": trial.sample.space,
            "reused_from": {"sweep": source["sweep"], "trial": source["trial"], "workdir": workdir},
            "train_fingerprint": train_fingerprint(config.train), "finished_at": time.time()})
  return r


def finished_trials(config, workdir: str) -> dict[str, dict[str, Any]]:
  return {r["trial"]: r for r in read_records(results_path(workdir))
          if r.get("sweep") == config.name and "trial" in r}


def run_sweep(config, workdir: str, train_fn: TrainFn, shard: Shard = Shard(),
              log: Callable[[str], None] = logging.info, on_error: str = "stop",
              reuse_from: Sequence[str] = ()) -> list[dict[str, Any]]:
  """Train this shard's unfinished trials in order; returns the records written by this call.

  `train_fn(train_config, trial_workdir) -> metrics` must return `eval_accuracy` (and ideally `best_eval_accuracy`);
  the CLI passes `regnet_jax.train.train_and_evaluate` or a trials.SubprocessTrainer. A trial the trainer reports
  as preempted is not recorded: the sweep stops there, and the next run resumes that trial from its checkpoint.
  on_error="stop" lets a trial's exception end the sweep; "skip" logs it to failures.jsonl, goes on with the next
  trial and raises SweepError at the end naming the failed ones (unrecorded: the next run retries them).
  reuse_from: workdirs of the config's `reuse` sweep; a trial whose model that sweep already trained with the same
  recipe is recorded from it (marked `reused_from`) instead of trained (see `reusable_records`).
  """
  if on_error not in ON_ERROR:
    raise SweepError(f"on_error={on_error!r} must be one of {', '.join(ON_ERROR)}")
  trials = plan_trials(config)
  done = finished_trials(config, workdir)
  mine = [t for t in trials if shard.owns(t.index)]
  for t in mine:
    if t.trial_id in done and done[t.trial_id]["spec"] != spec_to_dict(t.sample.spec):
      raise SweepError(f"{results_path(workdir)} records trial {t.trial_id} of sweep {config.name!r} with another "
                       "model than the config samples now (the config changed since); use a new --workdir or "
                       "restore the config")
  todo = round_robin([t for t in mine if t.trial_id not in done])
  written, failed = [], []
  reusable = reusable_records(config, reuse_from, log)
  if reusable:
    left = []
    for t in todo:
      hit = reusable.get((json.dumps(spec_to_dict(t.sample.spec), sort_keys=True), int(config.seed)))
      if hit is None:
        left.append(t)
        continue
      record = reused_record(config, t, *hit)
      append_record(results_path(workdir), record)
      written.append(record)
    log(f"sweep {config.name}: {len(todo) - len(left)} trial(s) taken from {config.reuse.sweep!r} "
        f"({', '.join(reuse_from)}) instead of trained")
    todo = left
  log(f"sweep {config.name}: {len(trials)} trials, shard {shard.index}/{shard.count} owns {len(mine)}, "
      f"{len(mine) - len(todo)} already finished, {len(todo)} to run")
  for n, t in enumerate(todo, start=1):
    start = time.perf_counter()
    try:
      metrics = train_fn(trial_train_config(config.train, t.sample), os.path.join(workdir, "trials", t.trial_id))
    except Exception as e:  # noqa: BLE001 (KeyboardInterrupt and SystemExit still end the sweep)
      if on_error == "stop":
        raise
      failed.append(t.trial_id)
      append_record(os.path.join(workdir, FAILURES_FILE), {
          "sweep": config.name, "trial": t.trial_id, "index": t.index, "error": f"{type(e).__name__}: {e}",
          "host": socket.gethostname(), "failed_at": time.time()})
      log(f"[{n}/{len(todo)}] {t.trial_id} FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
          "; going on with the next trial")
      continue
    if metrics.get("preempted"):
      log(f"{t.trial_id} was preempted at step {metrics.get('step')}; rerun the same command to resume it")
      return written  # failures so far are retried by that rerun too
    record = make_record(config, t, metrics, time.perf_counter() - start)
    append_record(results_path(workdir), record)
    written.append(record)
    log(f"[{n}/{len(todo)}] {t.trial_id}: best error {record['best_error']:.2f}%, final "
        f"{record['final_error']:.2f}%, {record['flops'] / 1e6:.1f} MF, {record['seconds']:.0f} s")
  if failed:
    raise SweepError(f"{len(failed)} trial(s) failed and were not recorded: {', '.join(failed)} (errors in "
                     f"{os.path.join(workdir, FAILURES_FILE)}, logs in their trial directories); rerun the same "
                     "command to retry them")
  return written
