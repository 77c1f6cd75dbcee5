"""launch/sweep_slurm.sbatch under a fake SLURM: `srun`, `scontrol` and the interpreter are scripts on PATH that
record how they were called, so the shard arguments, the errors and the requeue-on-signal path run here."""

import os
import signal
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "sweep_slurm.sbatch")
CONFIG = "configs/sweeps/fashion_mnist_cpu.py"

FAKE_SRUN = """#!/usr/bin/env bash
# srun [--opts] PROGRAM ARGS...: drop srun's own options, then become the program (signals reach it directly).
echo "srun $*" >> "$FAKE_LOG"
while [ "${1#--}" != "$1" ]; do shift; done
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_LOG"
"""
# The sweep: records its arguments; with FAKE_HANG it waits for SIGTERM like a trial that checkpoints and exits 0.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $*" >> "$FAKE_LOG"
if [ -n "${FAKE_HANG:-}" ]; then
  trap 'echo "python got TERM" >> "$FAKE_LOG"; exit 0' TERM
  touch "$FAKE_LOG.started"
  for i in $(seq 600); do sleep 0.1; done
  exit 3
fi
exit "${FAKE_EXIT:-0}"
"""


@pytest.fixture
def fake_slurm(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("python", FAKE_PYTHON)):
    path = bin_dir / name
    path.write_text(text)
    path.chmod(0o755)
  log = tmp_path / "calls.log"
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_LOG=str(log), PYTHON=str(bin_dir / "python"),
             SLURM_SUBMIT_DIR=ROOT, SLURM_JOB_ID="4242", SLURM_ARRAY_JOB_ID="4240")
  return env, log


def _calls(log):
  return log.read_text().splitlines() if log.exists() else []


def _run(env, *args, **extra):
  return subprocess.run(["bash", SCRIPT, *args], env=dict(env, **extra), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("task, slurm, shard", [
    ("3", {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4"}, "3/4"),
    ("0", {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "1"}, "0/1"),
    # --array=1-4 on a SLURM without SLURM_ARRAY_TASK_COUNT: from MIN and MAX
    ("2", {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "4"}, "1/4"),
])
def test_array_task_becomes_its_shard(fake_slurm, task, slurm, shard):
  env, log = fake_slurm
  out = _run(env, CONFIG, "/tmp/sweep_wd", "--trial_process=subprocess", SLURM_ARRAY_TASK_ID=task, **slurm)
  assert out.returncode == 0, out.stderr
  python = [c for c in _calls(log) if c.startswith("python ")]
  assert python == [f"python -m regnet_jax.sweep --config={CONFIG} --workdir=/tmp/sweep_wd --shard={shard} "
                    "--trial_process=subprocess"]
  assert not any(c.startswith("scontrol") for c in _calls(log))  # no signal, no requeue


def test_the_sweeps_exit_code_is_the_jobs(fake_slurm):
  env, log = fake_slurm
  out = _run(env, CONFIG, "/tmp/wd", SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="2", FAKE_EXIT="2")
  assert out.returncode == 2
  assert not any(c.startswith("scontrol") for c in _calls(log))  # a failed sweep is not requeued forever


def test_missing_config_is_a_clear_error(fake_slurm):
  env, log = fake_slurm
  out = _run(env, "configs/sweeps/no_such_sweep.py", "/tmp/wd", SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="2")
  assert out.returncode == 2
  assert "sweep config 'configs/sweeps/no_such_sweep.py' not found" in out.stderr
  assert _calls(log) == []  # nothing launched


def test_outside_an_array_or_without_arguments(fake_slurm):
  env, log = fake_slurm
  out = _run(env, CONFIG, "/tmp/wd")
  assert out.returncode == 2 and "SLURM_ARRAY_TASK_ID is not set" in out.stderr and "--array" in out.stderr
  out = _run(env, CONFIG, SLURM_ARRAY_TASK_ID="0")
  assert out.returncode == 2 and "sbatch --array" in out.stderr
  out = _run(env, CONFIG, "/tmp/wd", SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT="4")
  assert out.returncode == 2 and "contiguous" in out.stderr
  assert _calls(log) == []


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_preemption_signal_stops_the_sweep_and_requeues(fake_slurm, signum):
  env, log = fake_slurm
  proc = subprocess.Popen(["bash", SCRIPT, CONFIG, "/tmp/wd"], env=dict(
      env, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2", FAKE_HANG="1"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 30
  while not os.path.exists(f"{log}.started"):
    assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  proc.send_signal(signum)  # what `--signal=B:USR1@120` does: to the batch shell only
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, err
  calls = _calls(log)
  assert "python got TERM" in calls  # passed on to the sweep, which checkpoints and exits 0
  assert calls[-1] == "scontrol requeue 4242"
  assert "requeueing job 4242" in err
