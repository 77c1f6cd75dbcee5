"""Faults, end to end through `python -m regnet_jax.main` in a subprocess: kill -9 and SIGTERM mid-run, a corrupt
latest checkpoint, a diverging (NaN) run, and bad input. A rerun of the same command must end exactly where an
uninterrupted run ends (bit-identical state on CPU), and bad input must fail before anything is written.

Every run is the d2l config shrunk to 32x32 images, batch 8, 16 steps (2 epochs of a 64-image slice, so evals run
at steps 8 and 16, inside the resumed part). A persistent XLA compilation cache shared by the runs of the session
keeps each run at a few seconds after the first; it changes which process compiles, not what runs.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from regnet_jax import checkpointing, optim, sharding, steps, train
from regnet_jax import config as config_lib
from regnet_jax import data as data_lib
from regnet_jax.data import fashion_mnist, idx
from _subprocess_env import main_subprocess_env  # pytest puts tests/ on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 16
CHECKPOINT_EVERY = 3  # the reference keeps steps 12, 15, 16 (keep_checkpoints=3)
RUN = dict(image_size=32, batch_size=8, eval_batch_size=8, num_train_steps=NUM_STEPS, log_every_steps=1,
           checkpoint_every_steps=CHECKPOINT_EVERY, progress_bar=False)
# The step to interrupt at: seeded, so CI is reproducible; REGNET_FAULT_SEED=... explores other steps.
SEED = os.environ.get("REGNET_FAULT_SEED", "0")
TIMEOUT_S = 300


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """64 train / 16 test Fashion-MNIST images as IDX files (a real slice when the Debian package is installed,
  else deterministic noise: these tests compare runs with each other, not with known accuracies)."""
  d = tmp_path_factory.mktemp("fmnist")
  rng = np.random.default_rng(0)
  for split, n in (("train", 64), ("test", 16)):
    if fashion_mnist.find_idx_dir(None) is not None:
      images, labels = fashion_mnist.load_split(fashion_mnist.find_idx_dir(None), split)
      images, labels = images[:n, :, :, 0], labels[:n]
    else:
      images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)
    img_name, lbl_name = fashion_mnist.FILES[split]
    idx.write_idx(d / img_name, images)
    idx.write_idx(d / lbl_name, labels.astype(np.uint8))
  return str(d)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return main_subprocess_env(tmp_path_factory.getbasetemp() / "jax_cache",
                             XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _cmd(workdir, data, **overrides):
  flags = {**RUN, "data_dir": data, **overrides}
  return [sys.executable, "-m", "regnet_jax.main", "--config=configs/regnetx32.py", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in flags.items())]


def _run(cmd, env):
  r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
  return r.returncode, r.stderr


def _start(cmd, env, log_path):
  log = open(log_path, "w")
  return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log), log


def _records(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  for line in open(path):
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:  # a line being written right now
      pass
  return out


def _train_losses(workdir):
  return [(r["step"], r["train_loss"]) for r in _records(workdir) if "train_loss" in r]


def _eval_losses(workdir):
  return [(r["step"], r["eval_loss"]) for r in _records(workdir) if "eval_loss" in r]


def _last_logged_step(workdir):
  return max((s for s, _ in _train_losses(workdir)), default=0)


def _wait_until(proc, condition, what):
  deadline = time.monotonic() + TIMEOUT_S
  while not condition():
    assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.005)


def _config(data_dir):
  c = config_lib.base_config()
  c.update({**RUN, "data_dir": data_dir})
  return c


def _checkpointer(workdir):
  return checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))


def _saved_steps(workdir):
  with _checkpointer(workdir) as ckpt:  # note: opening one removes leftover tmp dirs of killed saves
    return ckpt.all_steps()


def _restore(workdir, data_dir, step=None):
  """(state, step) of a run's checkpoint, restored onto this process's one device."""
  c = _config(data_dir)
  info = data_lib.dataset_info(c.dataset, c.data_dir)
  mesh = sharding.make_mesh(jax.devices()[:1])
  model = train.build_model(c, info)
  tx = optim.make_optimizer(c, data_lib.steps_per_epoch(c.dataset, c.batch_size, c.data_dir))
  abstract = steps.abstract_train_state(jax.random.key(c.seed), mesh, model=model, tx=tx, info=info,
                                        image_size=c.image_size)
  ckpt = _checkpointer(workdir)
  try:
    state, _, restored_step = ckpt.restore(abstract, step=step)
  finally:
    ckpt.close()
  return state, restored_step


def _host_leaves(state):
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out[jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def _assert_same_state(a, b):
  """Bit-identical: parameters, BN statistics, optimiser state, step and RNG."""
  a, b = _host_leaves(a), _host_leaves(b)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, env):
  """The uninterrupted run every interrupted one must match."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  rc, err = _run(_cmd(workdir, data_dir), env)
  assert rc == 0, err[-3000:]
  state, step = _restore(workdir, data_dir)
  assert step == NUM_STEPS
  assert [s for s, _ in _train_losses(workdir)] == list(range(1, NUM_STEPS + 1))
  assert [s for s, _ in _eval_losses(workdir)] == [8, 16]
  assert _saved_steps(workdir) == [12, 15, 16]
  return dict(workdir=workdir, state=state, train=_train_losses(workdir), eval=_eval_losses(workdir))


def _assert_matches_reference(workdir, data_dir, reference):
  state, step = _restore(workdir, data_dir)
  assert step == NUM_STEPS
  _assert_same_state(state, reference["state"])
  # The log reads as if the run had never stopped: every step once, the same losses (lines the interrupted
  # attempt wrote after its last checkpoint were dropped on resume).
  assert _train_losses(workdir) == reference["train"]
  assert _eval_losses(workdir) == reference["eval"]


def _resumed_from(stderr):
  found = re.findall(r"resumed from step (\d+)", stderr)
  assert len(found) == 1, stderr[-3000:]
  return int(found[0])


# ----------------------------------------------------------------------------------------- interruptions


def test_kill_9_at_a_random_step_then_rerun_equals_uninterrupted_run(tmp_path, data_dir, env, reference):
  kill_at = random.Random(f"kill-{SEED}").randint(CHECKPOINT_EVERY + 2, NUM_STEPS - 6)
  workdir = str(tmp_path / "run")
  cmd = _cmd(workdir, data_dir)
  proc, log = _start(cmd, env, tmp_path / "killed.log")
  with log:
    # Killed once it has logged `kill_at` steps and its first checkpoint is complete (so the rerun resumes
    # rather than starting over); whatever save is in flight at that moment dies with it.
    first = os.path.join(workdir, "checkpoints", str(CHECKPOINT_EVERY))
    _wait_until(proc, lambda: _last_logged_step(workdir) >= kill_at and os.path.isdir(first), f"step {kill_at}")
    proc.kill()
    assert proc.wait(TIMEOUT_S) == -signal.SIGKILL
  killed_at = _last_logged_step(workdir)
  assert killed_at < NUM_STEPS and not os.path.exists(os.path.join(workdir, "training_curves.png"))

  rc, err = _run(cmd, env)
  assert rc == 0, err[-3000:]
  resumed = _resumed_from(err)
  # Our INFO lines reach the console, orbax's (dozens per run) do not; see regnet_jax/console.py.
  assert not re.search(r"^I\S* .*(orbax|checkpoint_manager|async_checkpointer)", err, re.M), err[-3000:]
  assert CHECKPOINT_EVERY <= resumed <= killed_at and resumed % CHECKPOINT_EVERY == 0
  _assert_matches_reference(workdir, data_dir, reference)


def test_sigterm_checkpoints_at_next_step_exits_0_and_rerun_completes(tmp_path, data_dir, env, reference):
  term_at = random.Random(f"term-{SEED}").randint(2, NUM_STEPS - 6)
  workdir = str(tmp_path / "run")
  # No periodic checkpoints: the only one before the end must be the one SIGTERM asked for.
  cmd = _cmd(workdir, data_dir, checkpoint_every_steps=1000)
  proc, log = _start(cmd, env, tmp_path / "preempted.log")
  with log:
    _wait_until(proc, lambda: _last_logged_step(workdir) >= term_at, f"step {term_at}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT_S) == 0
  err = (tmp_path / "preempted.log").read_text()
  saved = _saved_steps(workdir)
  assert len(saved) == 1 and term_at <= saved[0] < NUM_STEPS, saved
  # Saved at the step boundary right after the signal: no step was trained (or logged) past the checkpoint.
  assert _last_logged_step(workdir) == saved[0]
  assert "SIGTERM received: checkpointing at the next step boundary" in err
  assert f"preempted: checkpoint at step {saved[0]} written; rerun the same command to resume" in err
  assert not os.path.exists(os.path.join(workdir, "training_curves.png"))

  rc, err = _run(cmd, env)
  assert rc == 0, err[-3000:]
  assert _resumed_from(err) == saved[0]
  _assert_matches_reference(workdir, data_dir, reference)


def _truncate(files):
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)


def _garbage(files):
  for f in files:
    if os.path.basename(f) == "manifest.ocdbt":  # the index of the array data
      with open(f, "wb") as fh:
        fh.write(np.random.default_rng(0).integers(0, 256, os.path.getsize(f), dtype=np.uint8).tobytes())


@pytest.mark.parametrize("damage", [_truncate, _garbage], ids=["truncated", "garbage"])
def test_corrupt_latest_checkpoint_falls_back_to_previous_with_warning(tmp_path, data_dir, env, reference, damage):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference["workdir"], workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  state_dir = os.path.join(ckpt_dir, str(NUM_STEPS), "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs]
  damage(files)

  rc, err = _run(_cmd(workdir, data_dir), env)
  assert rc == 0, err[-3000:]
  warning = re.search(rf"Checkpoint step {NUM_STEPS} in {re.escape(ckpt_dir)} could not be restored \((.+)\); "
                      r"falling back to the previous checkpoint\.", err)
  assert warning, err[-3000:]
  assert _resumed_from(err) == NUM_STEPS - 1
  # The corrupt step is moved aside for inspection, and the rerun trained step 16 again, exactly.
  assert [d.split("-")[0] for d in os.listdir(os.path.join(ckpt_dir, "corrupt"))] == [str(NUM_STEPS)]
  _assert_matches_reference(workdir, data_dir, reference)


def test_nan_loss_stops_with_clear_error_and_last_checkpoint_is_intact(tmp_path, data_dir, env):
  workdir = str(tmp_path / "run")
  # A checkpoint at every step, so the last one is as close to the divergence as it can be.
  rc, err = _run(_cmd(workdir, data_dir, learning_rate=1e9, checkpoint_every_steps=1), env)
  assert rc == 2, err[-3000:]
  assert "Traceback" not in err
  last_line = err.strip().splitlines()[-1]
  # The state check (NaN/Inf in any parameter, BN statistic or optimiser buffer) or the loss check, whichever
  # fires first; here the state's, since NaN parameters can leave the loss finite (compiled ReLUs on CPU can
  # map NaN to 0).
  m = re.fullmatch(r"error: training (?:diverged|loss became \S+) at step (\d+)[:;] .*", last_line)
  assert m, last_line
  bad_step = int(m.group(1))
  assert re.search(r"the last checkpoint \(before (this step|the NaN)\) is intact", last_line), last_line
  assert "--config.learning_rate" in last_line
  assert 1 < bad_step < NUM_STEPS
  # Nothing of the diverged step was saved or logged; the checkpoint before it restores and is all finite.
  assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]  # no save left half-done
  assert _saved_steps(workdir)[-1] == bad_step - 1
  assert _last_logged_step(workdir) == bad_step - 1
  state, step = _restore(workdir, data_dir)
  assert step == bad_step - 1
  for name, leaf in _host_leaves((state.params, state.batch_stats, state.opt_state)).items():
    assert np.all(np.isfinite(leaf)), name


# --------------------------------------------------------------------------------------------- bad input


def _bad_input_cases():
  cases = [
      ("unknown_model", {"model": "regnetx_3.3gf"}, 2, r"error: unknown model 'regnetx_3.3gf'; .*known: .*regnetx32"),
      ("malformed_value", {"batch_size": "abc"}, 1,
       r"Flags parsing error: flag --config.batch_size=abc: invalid literal for int\(\)"),
      ("missing_dataset", {"data_dir": "EMPTY"}, 2,
       r"error: no Fashion-MNIST IDX files in \S+empty; .*apt-get install -y dataset-fashion-mnist"),
      ("workdir_under_proc", {"workdir": "/proc/regnet_jax_no_such_dir/run"}, 2,
       r"error: cannot create workdir '/proc/regnet_jax_no_such_dir/run' \(.+\); pass a --workdir you can write"),
      ("workdir_under_a_file", {"workdir": "FILE/run"}, 2,
       r"error: workdir '\S+/a_file/run' is not writable \(\S+/a_file is not a writable directory\)"),
  ]
  if os.geteuid() != 0:  # root may write into a mode-555 directory
    cases.append(("workdir_read_only", {"workdir": "READONLY/run"}, 2, r"error: workdir '\S+/read_only/run' is not "
                  r"writable \(\S+/read_only is not a writable directory\)"))
  return [pytest.param(*c[1:], id=c[0]) for c in cases]


@pytest.mark.parametrize("overrides, exit_code, message", _bad_input_cases())
def test_bad_input_fails_clearly_before_writing(tmp_path, data_dir, env, overrides, exit_code, message):
  overrides = dict(overrides)
  workdir = overrides.pop("workdir", str(tmp_path / "run"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "a_file").write_text("not a directory")
  (tmp_path / "read_only").mkdir(mode=0o555)
  workdir = workdir.replace("FILE", str(tmp_path / "a_file")).replace("READONLY", str(tmp_path / "read_only"))
  if overrides.get("data_dir") == "EMPTY":
    overrides["data_dir"] = str(tmp_path / "empty")
  rc, err = _run(_cmd(workdir, data_dir, **overrides), env)
  assert rc == exit_code, err[-3000:]
  assert re.search(message, err), err[-3000:]
  assert "Traceback" not in err
  # Nothing was created: not the workdir, and nothing next to it.
  assert sorted(os.listdir(tmp_path)) == ["a_file", "empty", "read_only"]
  assert not os.listdir(tmp_path / "empty") and not os.listdir(tmp_path / "read_only")
  assert not os.path.exists(workdir)
