"""How a sweep trains its trials: all in this process (the default), or each in a child process of its own.

In-process is cheapest: one interpreter start, one JAX import and one backend for the whole shard, and every
trial is the same `train.train_and_evaluate` call the CLI makes, so results do not depend on the mode.
`subprocess` buys crash isolation: a trial that kills its process (a segfault in a native kernel, the OOM killer)
fails alone, and no state (jit caches, the allocator's retained heap) carries from one trial to the next. It costs
a process start and the imports per trial (see benchmarks/trial_cost.py). SIGTERM and SIGINT reaching the sweep
are forwarded to the running child, which checkpoints and reports itself preempted, as an in-process trial does.

Both share the persistent XLA compilation cache (`compilation_cache_dir`), which saves the compile when a trial is
trained again: after a preemption or requeue, or when a pilot retrains the same models.

Importing this module loads no JAX.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from regnet_jax import runtime

TRIAL_PROCESSES = ("inprocess", "subprocess")
CACHE_OFF = ("none", "off", "")
CONFIG_FILE, RESULT_FILE, LOG_FILE = "trial_config.pkl", "trial_result.json", "trial.log"


class TrialFailed(RuntimeError):
  """A trial's child process exited without a result (crash, kill, or an error the trainer raised)."""

  def __init__(self, message: str, exit_code: int | None = None):
    super().__init__(message)
    self.exit_code = exit_code


def cpu_key() -> str:
  """A short name for this kind of CPU: XLA:CPU compiles for the host's CPU and JAX's cache key does not say which,
  so a cache shared between unlike hosts gets one directory per kind."""
  return f"{platform.machine()}-{hashlib.sha256(runtime.cpu_description().encode()).hexdigest()[:12]}"


def compilation_cache_dir(value: str) -> str | None:
  """--compilation_cache: 'auto' -> <user cache>/xla/<cpu key>; 'none' (or 'off', '') -> None; else the path."""
  if value in CACHE_OFF:
    return None
  if value == "auto":
    return os.path.join(runtime.cache_root(), "xla", cpu_key())
  return os.path.abspath(os.path.expanduser(value))


def enable_compilation_cache(path: str | None) -> None:
  """Points JAX's persistent compilation cache at `path` (None: leave JAX's setting alone). Entries are only
  written for compilations over JAX's threshold (jax_persistent_cache_min_compile_time_secs, 1 s)."""
  if path is None:
    return
  import jax
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)


def inprocess_trainer(cache_dir: str | None = None):
  """`train_and_evaluate` with the compilation cache on: the sweep's default TrainFn."""
  enable_compilation_cache(cache_dir)
  from regnet_jax.train import train_and_evaluate
  return train_and_evaluate


class SubprocessTrainer:
  """A TrainFn that trains each trial in `python -m regnet_jax.sweep.worker` (same interpreter, same environment
  plus the compilation cache). The child's output goes to TRIAL_DIR/trial.log; a child that exits without a
  result raises TrialFailed quoting the end of that log."""

  def __init__(self, cache_dir: str | None = None, python: str = sys.executable,
               env: Mapping[str, str] | None = None):
    self.cache_dir, self.python = cache_dir, python
    self.env = dict(os.environ if env is None else env)
    if cache_dir is not None:
      self.env["JAX_COMPILATION_CACHE_DIR"] = cache_dir

  def __call__(self, config, workdir: str) -> dict[str, Any]:
    os.makedirs(workdir, exist_ok=True)
    config_path, result_path = os.path.join(workdir, CONFIG_FILE), os.path.join(workdir, RESULT_FILE)
    log_path = os.path.join(workdir, LOG_FILE)
    with open(config_path, "wb") as f:
      pickle.dump(config, f)  # pickle, not JSON: every field keeps its exact type
    if os.path.exists(result_path):
      os.remove(result_path)  # a stale result of an earlier attempt must not pass for this one's
    cmd = [self.python, "-m", "regnet_jax.sweep.worker", f"--train_config={config_path}", f"--workdir={workdir}",
           f"--result={result_path}"]
    with open(log_path, "ab") as log, _forward_signals() as forward:
      # Handlers first, child second: a signal in between is held and passed on as soon as the child exists.
      code = forward.start(lambda: subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env))
    if code == 0 and os.path.exists(result_path):
      with open(result_path) as f:
        return json.load(f)
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    raise TrialFailed(f"trial in {workdir} {how} without a result; end of {log_path}:\n{_tail(log_path)}", code)


class _forward_signals:
  """While the child runs, SIGTERM / SIGINT to this process reach it as SIGTERM (it checkpoints and exits 0)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.child: subprocess.Popen | None = None
    self.pending = False
    self.previous: dict = {}

  def _forward(self, signum, frame):
    del signum, frame
    if self.child is None:
      self.pending = True
    elif self.child.poll() is None:
      self.child.send_signal(signal.SIGTERM)

  def start(self, popen) -> int:
    """Starts the child with `popen()`, passes on a signal that came before, waits; returns its exit code."""
    self.child = popen()
    if self.pending:
      self.child.send_signal(signal.SIGTERM)
    return self.child.wait()

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self.previous = {s: signal.signal(s, self._forward) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self.previous.items():
      signal.signal(s, handler)


def _tail(path: str, lines: int = 15) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 8192))
      text = f.read().decode("utf-8", errors="replace")
  except OSError:
    return "(no log)"
  return "\n".join(text.splitlines()[-lines:])


def make_trainer(mode: str, cache_dir: str | None):
  if mode == "inprocess":
    return inprocess_trainer(cache_dir)
  if mode == "subprocess":
    return SubprocessTrainer(cache_dir)
  raise ValueError(f"--trial_process={mode!r} must be one of {', '.join(TRIAL_PROCESSES)}")
