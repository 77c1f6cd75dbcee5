"""How trials run: in-process vs one child per trial (same results), crash isolation, signal forwarding, resume
after a kill, shard coverage. The real trainer trains two tiny models (the d2l exercise spaces, shrunk) for 3 steps."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import ml_collections
import pytest

from regnet_jax import config as config_lib
from regnet_jax.sweep import results, trials
from regnet_jax.sweep.runner import Shard, SweepError, plan_trials, run_sweep
from test_sweep_runner import FakeTrainer, sweep_config  # pytest puts tests/ on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"depth_range": (1, 1), "width_range": (8, 16)}


def tiny_sweep():
  """One X-block VioNet_b model and one basic-block AnyNet_E_basic model, a few thousand parameters each."""
  c = ml_collections.ConfigDict()
  c.name = "tiny"
  c.seed = 0
  c.regime = ml_collections.ConfigDict({"flops": None, "params": None, "acts": None, "image_size": 32,
                                        "channels": 1, "num_classes": 10})
  c.spaces = ml_collections.ConfigDict({"vio_b": {"n": 1, "base": "VioNet_b", **TINY},
                                        "basic_e": {"n": 1, "base": "AnyNet_E_basic", **TINY}})
  t = config_lib.base_config()
  t.update(image_size=32, batch_size=32, eval_batch_size=1000, num_train_steps=3, log_every_steps=1,
           checkpoint_every_steps=100, progress_bar=False, learning_rate=0.05,
           # Pure-XLA kernels: this test is about how trials run, and they compile fastest.
           conv_impl="xla", bn_impl="xla")
  c.train = t
  return c


def child_env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith("REGNET_")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
  return env


@pytest.fixture(scope="module")
def inprocess_records(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("inprocess"))
  return run_sweep(tiny_sweep(), workdir, trials.inprocess_trainer(None)), workdir


def test_exercise_spaces_train_in_process(inprocess_records):
  recs, workdir = inprocess_records
  assert [r["trial"] for r in recs] == [t.trial_id for t in plan_trials(tiny_sweep())]
  by_space = {r["space"]: r for r in recs}
  assert by_space["basic_e"]["spec"]["block_type"] == "basic"
  assert len(set(by_space["vio_b"]["spec"]["bot_muls"])) > 1
  for r in recs:
    assert 0 <= r["final_error"] <= 100 and r["train_steps"] == 3 and r["metrics"]["eval_count"] == 10000
    assert r["train_seed"] == 0 and r["batch_size"] == 32
  assert len(results.read_records(results.results_path(workdir))) == 2


@pytest.mark.slow  # CI runs it (.ci/run: -m slow); the default suite stays near 10 minutes
def test_subprocess_trials_match_in_process_bit_for_bit(inprocess_records, tmp_path):
  """Same code, same compiled programs, same data order: a child per trial gives exactly the in-process numbers
  (the persistent compilation cache in between changes who compiles, not what runs)."""
  recs, _ = inprocess_records
  cache = str(tmp_path / "xla_cache")
  trainer = trials.SubprocessTrainer(cache, env=child_env(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"))
  got = run_sweep(tiny_sweep(), str(tmp_path / "sub"), trainer)
  keys = ("trial", "spec", "flops", "final_error", "best_error")
  assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in recs]
  for a, b in zip(got, recs):
    for k in ("eval_loss", "eval_accuracy", "train_loss", "train_accuracy"):
      assert a["metrics"][k] == b["metrics"][k], (a["trial"], k)
  assert os.listdir(cache)  # the children wrote the cache the runner pointed them at
  assert os.path.exists(tmp_path / "sub" / "trials" / got[0]["trial"] / trials.LOG_FILE)


def _fake_python(tmp_path, body):
  """An executable standing in for the interpreter: SubprocessTrainer runs `PYTHON -m ... --result=PATH`."""
  path = tmp_path / "fake_python"
  path.write_text(f"#!{sys.executable}\nimport json, os, signal, sys, time\n"
                  "result = [a.split('=', 1)[1] for a in sys.argv if a.startswith('--result=')][0]\n"
                  + textwrap.dedent(body))
  path.chmod(0o755)
  return str(path)


def test_a_crashing_trial_fails_alone(tmp_path):
  python = _fake_python(tmp_path, "print('about to crash', flush=True)\nos.kill(os.getpid(), signal.SIGSEGV)\n")
  trainer = trials.SubprocessTrainer(python=python, env=child_env())
  with pytest.raises(trials.TrialFailed, match=r"killed by signal 11(.|\n)*about to crash") as e:
    trainer(ml_collections.ConfigDict({"x": 1}), str(tmp_path / "t"))
  assert e.value.exit_code == -signal.SIGSEGV
  ok = _fake_python(tmp_path, "json.dump({'eval_accuracy': 0.5}, open(result, 'w'))\n")
  assert trials.SubprocessTrainer(python=ok, env=child_env())(ml_collections.ConfigDict(), str(tmp_path / "u")) == {
      "eval_accuracy": 0.5}


def test_skip_goes_on_records_failures_and_the_rerun_retries_them(tmp_path):
  c = sweep_config()
  with pytest.raises(SweepError, match=r"1 trial\(s\) failed.*RegNet-000.*rerun"):  # 2nd in round-robin order
    run_sweep(c, str(tmp_path), FakeTrainer(fail_on_call=2), on_error="skip")
  assert len(results.read_records(results.results_path(str(tmp_path)))) == 5
  failures = results.read_records(str(tmp_path / "failures.jsonl"))
  assert [f["trial"] for f in failures] == ["RegNet-000"] and "simulated crash" in failures[0]["error"]
  again = FakeTrainer()
  assert [r["trial"] for r in run_sweep(c, str(tmp_path), again, on_error="skip")] == ["RegNet-000"]
  with pytest.raises(SweepError, match="on_error"):
    run_sweep(c, str(tmp_path), again, on_error="ignore")


def test_sigterm_reaches_the_trial_child_which_reports_preemption(tmp_path):
  started = tmp_path / "started"
  python = _fake_python(tmp_path, f"""
      def stop(signum, frame):
        json.dump({{"preempted": True, "step": 2, "eval_accuracy": 0.1}}, open(result, "w"))
        sys.exit(0)
      signal.signal(signal.SIGTERM, stop)
      open({str(started)!r}, "w").close()
      time.sleep(60)
      sys.exit(3)
      """)

  def preempt():  # the scheduler's notice, to this (the sweep's) process
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
      time.sleep(0.02)
    if started.exists():  # else the child never ran: the test fails on its own, without a SIGTERM to pytest
      os.kill(os.getpid(), signal.SIGTERM)

  before = signal.getsignal(signal.SIGTERM)
  threading.Thread(target=preempt, daemon=True).start()
  c = sweep_config()
  written = run_sweep(c, str(tmp_path / "wd"), trials.SubprocessTrainer(python=python, env=child_env()))
  assert written == []  # preempted: nothing recorded, the sweep stopped
  assert signal.getsignal(signal.SIGTERM) == before


KILLED_SWEEP = """
import sys, time
sys.path[:0] = [{tests!r}, {root!r}]
from test_sweep_runner import FakeTrainer, sweep_config
from regnet_jax.sweep.runner import run_sweep
class Slow(FakeTrainer):
  def __call__(self, config, workdir):
    time.sleep(0.2)
    return super().__call__(config, workdir)
run_sweep(sweep_config(n=4), {workdir!r}, Slow())
"""


def test_resume_after_sigkill_trains_every_trial_exactly_once(tmp_path):
  workdir = str(tmp_path / "wd")
  path = results.results_path(workdir)
  code = KILLED_SWEEP.format(tests=os.path.dirname(__file__), root=ROOT, workdir=workdir)
  proc = subprocess.Popen([sys.executable, "-c", code], env=child_env())
  deadline = time.monotonic() + 60
  while len(results.read_records(path)) < 3:
    assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be killed"
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = len(results.read_records(path))
  assert 3 <= killed_at < 8
  resumed = FakeTrainer()
  run_sweep(sweep_config(n=4), workdir, resumed)
  assert len(resumed.calls) == 8 - killed_at  # only the unfinished trials
  recs = results.read_records(path)
  assert sorted(r["trial"] for r in recs) == sorted(t.trial_id for t in plan_trials(sweep_config(n=4)))


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_partition_the_plan(count):
  plan = plan_trials(sweep_config(n=5))
  owned = [[t.trial_id for t in plan if Shard(i, count).owns(t.index)] for i in range(count)]
  flat = [x for shard in owned for x in shard]
  assert sorted(flat) == sorted(t.trial_id for t in plan) and len(flat) == len(set(flat))
  assert max(map(len, owned)) - min(map(len, owned)) <= 1  # balanced to one trial


def test_compilation_cache_dir_choices(monkeypatch, tmp_path):
  monkeypatch.setenv("REGNET_JAX_CACHE", str(tmp_path))
  auto = trials.compilation_cache_dir("auto")
  assert auto.startswith(os.path.join(str(tmp_path), "xla", "")) and trials.cpu_key() in auto
  assert trials.compilation_cache_dir("none") is None and trials.compilation_cache_dir("") is None
  assert trials.compilation_cache_dir("rel/dir") == os.path.abspath("rel/dir")
  with pytest.raises(ValueError, match="trial_process"):
    trials.make_trainer("threads", None)
  assert json.dumps(trials.TRIAL_PROCESSES)
