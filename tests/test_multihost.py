"""Multi-process training on one CPU machine (launch/local.sh): 2 processes x 2 devices must train exactly like
1 process x 4 devices, a SIGTERM to one process must stop every process at the same step with a checkpoint, and
the launcher and `regnet_jax.distributed` must fail clearly.

Each run is `python -m regnet_jax.main` in subprocesses (JAX's distributed runtime, gloo collectives between the
processes), with a persistent XLA compilation cache shared by the runs of the session.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from regnet_jax import checkpointing, distributed, optim, sharding, steps, train
from regnet_jax import config as config_lib
from regnet_jax import data as data_lib
from regnet_jax.data import fashion_mnist, idx
from _subprocess_env import main_subprocess_env  # pytest puts tests/ on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_SH = os.path.join(ROOT, "launch", "local.sh")
NUM_STEPS = 4
NUM_TEST = 20  # 3 eval batches of 8; in the last one process 1's whole half is padding
# Why synthetic images and lr 1e-4 (measured, 1x4 vs 2x2, d2l model at 32x32, batch 8):
# the two layouts sum gradients and BN statistics in a different order (XLA's in-process all-reduce vs gloo),
# so they differ by float32 rounding, and this model amplifies rounding fast. On real Fashion-MNIST images (mostly
# background, far from the normalised mean) BN-backward sums cancel heavily: already at lr 1e-4 train losses differ
# by 7e-5 at step 6 and momentum buffers by 20% of their scale. With images centred on the dataset mean the
# first steps agree to float32 rounding (losses to <= 3e-7, BN statistics 5e-7, momentum buffers 6e-6 of scale);
# after ~5 steps a ReLU whose input sits at ~0 flips in one run and not the other and the gradients part by a
# whole unit's contribution (step 6: buffers 14% apart), whatever the lr. So: 4 steps, on centred images, at
# lr 1e-4, which is still large enough for the loss curve to see the update (a step of lr 1e-4 moves the step-2
# loss by 6e-4 against lr 1e-5, so summing only one process's gradients would show at 1e-5).
RUN = dict(image_size=32, batch_size=8, eval_batch_size=8, num_train_steps=NUM_STEPS, log_every_steps=1,
           checkpoint_every_steps=2, learning_rate=1e-4, warmup_epochs=0, progress_bar=False)
TOL = 1e-5
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """64 train / 20 test images drawn around the Fashion-MNIST mean (so they normalise to ~0), random labels."""
  d = tmp_path_factory.mktemp("centred")
  rng = np.random.default_rng(0)
  for split, n in (("train", 64), ("test", NUM_TEST)):
    img_name, lbl_name = fashion_mnist.FILES[split]
    idx.write_idx(d / img_name, np.clip(rng.normal(73, 20, (n, 28, 28)), 0, 255).astype(np.uint8))
    idx.write_idx(d / lbl_name, rng.integers(0, 10, n).astype(np.uint8))
  return str(d)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return main_subprocess_env(tmp_path_factory.getbasetemp() / "jax_cache", XLA_FLAGS="", PYTHON=sys.executable)


def _main_args(workdir, data, **overrides):
  flags = {**RUN, "data_dir": data, **overrides}
  return ["--config=configs/regnetx32.py", f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in flags.items())]


def _one_process(workdir, data, env, devices):
  cmd = [sys.executable, "-m", "regnet_jax.main", *_main_args(workdir, data)]
  e = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.run(cmd, env=e, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)


def _local_sh_cmd(workdir, data, processes, devices, **overrides):
  return ["bash", LOCAL_SH, str(processes), f"--devices-per-process={devices}", "--",
          *_main_args(workdir, data, **overrides)]


def _records(workdir):
  out = []
  path = os.path.join(workdir, "metrics.jsonl")
  for line in open(path) if os.path.exists(path) else []:
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:  # being written
      pass
  return out


def _curve(workdir, key):
  return [(r["step"], r[key]) for r in _records(workdir) if key in r]


def _restore(workdir, data):
  """A run's newest checkpoint, restored onto this (pytest) process's single device."""
  c = config_lib.base_config()
  c.update({**RUN, "data_dir": data})
  info = data_lib.dataset_info(c.dataset, c.data_dir)
  model = train.build_model(c, info)
  tx = optim.make_optimizer(c, data_lib.steps_per_epoch(c.dataset, c.batch_size, c.data_dir))
  abstract = steps.abstract_train_state(jax.random.key(c.seed), sharding.make_mesh(jax.devices()[:1]), model=model,
                                        tx=tx, info=info, image_size=c.image_size)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    state, _, step = ckpt.restore(abstract)
  finally:
    ckpt.close()
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    flat[jax.tree_util.keystr(path)] = np.asarray(leaf)
  return flat, step


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, data_dir, env):
  base = tmp_path_factory.mktemp("multihost")
  one = str(base / "1x4")
  r = _one_process(one, data_dir, env, devices=4)
  assert r.returncode == 0, r.stderr[-3000:]
  two = str(base / "2x2")
  r = subprocess.run(_local_sh_cmd(two, data_dir, 2, 2), env=env, cwd=ROOT, capture_output=True, text=True,
                     timeout=TIMEOUT_S)
  assert r.returncode == 0, r.stderr[-3000:]
  # Both processes joined one 4-device job (not two 2-device ones).
  for p in (0, 1):
    assert f"[p{p}] " in r.stderr and re.search(rf"\[p{p}\] .*process {p} of 2, 2 local / 4 global devices",
                                                r.stderr), r.stderr[-3000:]
  return one, two


@pytest.mark.slow  # CI runs it (.ci/run: -m slow); the default suite stays near 10 minutes
def test_2_processes_x_2_devices_train_like_1_process_x_4_devices(straight_runs, data_dir):
  one, two = straight_runs
  for key in ("train_loss", "eval_loss", "eval_accuracy"):
    a, b = _curve(one, key), _curve(two, key)
    assert [s for s, _ in a] == [s for s, _ in b] == (list(range(1, NUM_STEPS + 1)) if key == "train_loss"
                                                       else [NUM_STEPS])
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=0, atol=TOL, err_msg=key)
  # Masked eval over both processes counted every test image once (process 1 held only padding at the end).
  assert _curve(two, "eval_count") == _curve(one, "eval_count") == [(NUM_STEPS, NUM_TEST)]
  # Only process 0 writes the log: one line per event, not two.
  assert len(_records(two)) == len(_records(one)) == NUM_STEPS + 1

  a, step_a = _restore(one, data_dir)
  b, step_b = _restore(two, data_dir)
  assert step_a == step_b == NUM_STEPS and a.keys() == b.keys()
  buffers = [k for k in a if k.startswith(".opt_state")]
  # Momentum buffers hold raw gradient sums (not scaled by the lr): they are what would expose a wrong
  # cross-process gradient sum, which moves the parameters by ~lr only. A missing or doubled process share puts
  # them O(1) apart. The rounding that the two layouts' summation orders leave is amplified in the last stage
  # (2 images per device, tiny BN variances): on an AVX-512 machine the buffers agreed to 6e-6 of their scale
  # after 4 steps; on an AVX2-only AMD EPYC (2026-12-07) they were 2.5% apart overall (root-sum-square relative)
  # and at most 21% apart in one tensor (s2_b4's grouped conv), 1.2% and 9.6% already at step 2. The bounds
  # below sit 4x and 2.4x above that and well below a wrong sum.
  diff = sum(float(np.sum((b[k].astype(np.float64) - a[k]) ** 2)) for k in buffers)
  norm = sum(float(np.sum(a[k].astype(np.float64) ** 2)) for k in buffers)
  assert buffers and (diff / norm) ** 0.5 < 0.1, f"momentum buffers {(diff / norm) ** 0.5:.3g} apart overall"
  for k in a:
    if k.startswith((".step", ".rng")):
      np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    elif k.startswith(".opt_state"):
      scale = max(float(np.abs(a[k]).max()), 1e-30)
      np.testing.assert_allclose(b[k] / scale, a[k] / scale, rtol=0, atol=0.5, err_msg=k)
    elif "batch_stats" in k:
      # Running statistics of global-batch (synced) BN: E[x^2] - E[x]^2 summed over devices in another order per
      # layout, so 2e-5 relative is seen on some CPUs (oneDNN with AVX2 kernels); an unsynced BN would be ~1e-2 off.
      np.testing.assert_allclose(b[k], a[k], rtol=10 * TOL, atol=TOL, err_msg=k)
    else:  # parameters
      np.testing.assert_allclose(b[k], a[k], rtol=TOL, atol=TOL, err_msg=k)


def _pids_of(marker, process_id):
  """PIDs of regnet_jax.main processes started with env MULTIHOST_TEST_MARKER=marker and REGNET_PROCESS_ID."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/environ", "rb") as f:
        environ = set(f.read().split(b"\0"))
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read()
    except OSError:
      continue
    if (f"MULTIHOST_TEST_MARKER={marker}".encode() in environ and f"REGNET_PROCESS_ID={process_id}".encode() in environ
        and b"regnet_jax.main" in cmdline):
      found.append(int(pid))
  return found


@pytest.mark.slow  # CI runs it (.ci/run: -m slow); the default suite stays near 10 minutes
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the processes through /proc")
def test_sigterm_to_one_process_checkpoints_all_at_the_same_step_and_rerun_completes(
    tmp_path, straight_runs, data_dir, env):
  _, straight = straight_runs
  workdir = str(tmp_path / "2x2")
  cmd = _local_sh_cmd(workdir, data_dir, 2, 2, checkpoint_every_steps=1000)  # only the preemption checkpoint
  e = {**env, "MULTIHOST_TEST_MARKER": str(tmp_path)}
  with open(tmp_path / "preempted.log", "w") as log:
    launcher = subprocess.Popen(cmd, env=e, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + TIMEOUT_S
    while not _curve(workdir, "train_loss"):  # step 1 done: every process is in the loop
      assert launcher.poll() is None, (tmp_path / "preempted.log").read_text()[-3000:]
      assert time.monotonic() < deadline
      time.sleep(0.01)
    pids = _pids_of(str(tmp_path), 1)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGTERM)  # a preemption notice to process 1 only
    assert launcher.wait(TIMEOUT_S) == 0, (tmp_path / "preempted.log").read_text()[-3000:]
  out = (tmp_path / "preempted.log").read_text()
  assert re.search(r"\[p1\] .*SIGTERM received", out) and not re.search(r"\[p0\] .*SIGTERM received", out)
  # Both processes agreed on the step (process 0 never got the signal) and wrote one checkpoint together.
  stopped = {p: re.findall(rf"\[p{p}\] .*preempted: checkpoint at step (\d+) written", out) for p in (0, 1)}
  assert len(stopped[0]) == 1 and stopped[0] == stopped[1], stopped
  step = int(stopped[0][0])
  assert 1 <= step < NUM_STEPS
  with checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    assert ckpt.all_steps() == [step]
  assert [s for s, _ in _curve(workdir, "train_loss")] == list(range(1, step + 1))

  r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert r.returncode == 0, r.stderr[-3000:]
  for p in (0, 1):
    assert re.search(rf"\[p{p}\] .*resumed from step {step} in ", r.stderr), r.stderr[-3000:]
  # Same topology as the uninterrupted 2x2 run: the resumed run ends bit-identical to it.
  assert _curve(workdir, "train_loss") == _curve(straight, "train_loss")
  assert _curve(workdir, "eval_loss") == _curve(straight, "eval_loss")
  a, step_a = _restore(straight, data_dir)
  b, step_b = _restore(workdir, data_dir)
  assert step_a == step_b == NUM_STEPS
  for k in a:
    np.testing.assert_array_equal(b[k], a[k], err_msg=k)


# ------------------------------------------------------------------------------- launcher / start-up errors


def _fake_python(tmp_path, body):
  """An executable standing in for python in local.sh (PYTHON=...), to test the launcher alone."""
  path = tmp_path / "fake_python"
  path.write_text("#!/bin/bash\n" + body)
  path.chmod(0o755)
  return str(path)


def test_local_sh_stops_the_others_when_one_process_fails(tmp_path):
  # Process 1 fails at once; process 0 ignores SIGTERM, as one blocked in a collective with a dead peer would.
  fake = _fake_python(tmp_path, 'if [ "$REGNET_PROCESS_ID" = 1 ]; then sleep 0.5; echo "p1 fails"; exit 3; fi\n'
                                'trap "echo p0 ignores TERM" TERM\n'
                                'echo "$REGNET_COORDINATOR $REGNET_NUM_PROCESSES $XLA_FLAGS $*"\n'
                                'for i in $(seq 600); do sleep 0.1; done\n')
  t0 = time.monotonic()
  r = subprocess.run(["bash", LOCAL_SH, "2", "--devices-per-process=3", "--port=12345", "--grace=1", "--", "--x=1"],
                     env={**os.environ, "PYTHON": fake}, capture_output=True, text=True, timeout=60)
  elapsed = time.monotonic() - t0
  assert r.returncode == 3, r.stdout + r.stderr
  assert elapsed < 10  # not the 60 s process 0 would run for
  assert "[p1] p1 fails" in r.stdout and "[p0] p0 ignores TERM" in r.stdout
  assert "[p0] 127.0.0.1:12345 2 --xla_force_host_platform_device_count=3" in r.stdout
  assert "-m regnet_jax.main --x=1" in r.stdout


def test_local_sh_forwards_sigterm_and_exits_with_the_processes_status(tmp_path):
  fake = _fake_python(tmp_path, 'trap "echo checkpointed $REGNET_PROCESS_ID; exit 0" TERM\necho started\n'
                                'for i in $(seq 600); do sleep 0.1; done\n')
  launcher = subprocess.Popen(["bash", LOCAL_SH, "2", "--"], env={**os.environ, "PYTHON": fake},
                              stdout=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 30
  lines = []
  while sum("started" in l for l in lines) < 2 and time.monotonic() < deadline:
    lines.append(launcher.stdout.readline())
  launcher.send_signal(signal.SIGTERM)
  out = "".join(lines) + launcher.stdout.read()
  assert launcher.wait(30) == 0
  assert "[p0] checkpointed 0" in out and "[p1] checkpointed 1" in out


@pytest.mark.parametrize("args, message", [
    ([], r"launch/local.sh N \[--devices-per-process=D\]"),
    (["two", "--"], r"N must be a positive integer, got 'two'"),
    (["2", "--gpus=2", "--"], r"unknown option --gpus=2"),
])
def test_local_sh_rejects_bad_arguments(args, message):
  r = subprocess.run(["bash", LOCAL_SH, *args], capture_output=True, text=True, timeout=30)
  assert r.returncode == 2 and re.search(message, r.stderr), r.stderr


def test_distributed_env_selects_how_jax_distributed_is_initialised(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  distributed.initialize_from_env({})
  assert calls == []  # a single process needs nothing
  distributed.initialize_from_env({"REGNET_DISTRIBUTED": "auto"})
  assert calls == [{}]  # TPU VM / SLURM: JAX reads the cluster's environment
  distributed.initialize_from_env({"REGNET_DISTRIBUTED": "explicit", "REGNET_COORDINATOR": "10.0.0.1:1234",
                                   "REGNET_NUM_PROCESSES": "4", "REGNET_PROCESS_ID": "3"})
  assert calls[-1] == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
  with pytest.raises(ValueError, match=r"REGNET_DISTRIBUTED=explicit needs .*REGNET_PROCESS_ID"):
    distributed.initialize_from_env({"REGNET_DISTRIBUTED": "explicit", "REGNET_COORDINATOR": "h:1",
                                     "REGNET_NUM_PROCESSES": "two", "REGNET_PROCESS_ID": "0"})
  with pytest.raises(ValueError, match=r"REGNET_DISTRIBUTED='mpi'; use 'auto' .* or 'explicit'"):
    distributed.initialize_from_env({"REGNET_DISTRIBUTED": "mpi"})
  assert len(calls) == 2  # the two bad settings never reached jax.distributed


def test_main_reports_a_bad_distributed_setting_in_one_line(tmp_path, env):
  workdir = tmp_path / "run"
  r = subprocess.run([sys.executable, "-m", "regnet_jax.main", "--config=configs/regnetx32.py",
                      f"--workdir={workdir}"], env={**env, "REGNET_DISTRIBUTED": "mpi"}, cwd=ROOT,
                     capture_output=True, text=True, timeout=TIMEOUT_S)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("error: REGNET_DISTRIBUTED='mpi'; use 'auto'")
  assert "Traceback" not in r.stderr and not workdir.exists()
