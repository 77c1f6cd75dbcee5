"""Sweep runner: resume, crash safety, shards, torn lines; with a fake trainer (tests only, the CLI trains)."""

import json
import math
import os

import ml_collections
import pytest

from regnet_jax.sweep import results
from regnet_jax.sweep.runner import (Shard, SweepError, parse_shard, plan_trials, round_robin, run_sweep,
                                     trial_train_config)
from regnet_jax.specs_io import spec_from_json


def sweep_config(n=3):
  c = ml_collections.ConfigDict()
  c.name = "unit"
  c.seed = 0
  c.regime = ml_collections.ConfigDict({"flops": (1e6, 8e6), "params": None, "acts": None, "image_size": 32,
                                        "channels": 1, "num_classes": 10})
  c.spaces = ml_collections.ConfigDict({"AnyNetX_A": {"n": n}, "RegNet": {"n": n}})
  c.train = ml_collections.ConfigDict({"model": "regnetx32", "model_spec": "", "image_size": 32, "seed": 0})
  return c


class FakeTrainer:
  """Deterministic accuracy from the spec; counts calls; can fail on a given call."""

  def __init__(self, fail_on_call=None, preempt_on_call=None):
    self.calls, self.fail_on_call, self.preempt_on_call = [], fail_on_call, preempt_on_call

  def __call__(self, config, workdir):
    self.calls.append(workdir)
    if len(self.calls) == self.fail_on_call:
      raise RuntimeError("simulated crash")
    if len(self.calls) == self.preempt_on_call:
      return {"preempted": True, "step": 5, "eval_accuracy": 0.1}
    spec = spec_from_json(config.model_spec)
    acc = 0.9 - 0.01 * abs(math.log2(spec.widths[-1] / spec.widths[0])) - 0.001 * sum(spec.depths)
    return {"eval_accuracy": acc, "best_eval_accuracy": acc + 0.01, "step": 10, "plot": "ignored.png"}


def test_plan_is_deterministic_and_in_the_regime():
  a, b = plan_trials(sweep_config()), plan_trials(sweep_config())
  assert a == b
  assert [t.trial_id for t in a] == ["AnyNetX_A-000", "AnyNetX_A-001", "AnyNetX_A-002", "RegNet-000", "RegNet-001",
                                     "RegNet-002"]
  assert [t.index for t in a] == list(range(6))
  assert all(1e6 <= t.sample.flops <= 8e6 for t in a)


def test_plan_rejects_a_regime_at_another_size_than_training():
  c = sweep_config()
  c.train.image_size = 64
  with pytest.raises(SweepError, match="image_size"):
    plan_trials(c)


def test_trial_config_sets_model_spec_and_leaves_the_base_alone():
  c = sweep_config()
  t = plan_trials(c)[0]
  cfg = trial_train_config(c.train, t.sample)
  assert spec_from_json(cfg.model_spec) == t.sample.spec
  assert c.train.model_spec == ""


def test_records_and_resume_skips_finished_trials(tmp_path):
  c, fake = sweep_config(), FakeTrainer()
  written = run_sweep(c, str(tmp_path), fake)
  assert len(fake.calls) == 6 and len(written) == 6
  recs = results.read_records(results.results_path(str(tmp_path)))
  assert [r["trial"] for r in recs] == [t.trial_id for t in round_robin(plan_trials(c))]
  r = recs[0]
  assert {"trial", "spec", "flops", "params", "acts", "final_error", "best_error", "seconds"} <= set(r)
  assert math.isclose(r["final_error"] - r["best_error"], 1.0)
  assert recs[3]["regnet"]["w0"] % 8 == 0 and recs[0]["regnet"] is None
  assert "plot" not in r["metrics"]
  again = FakeTrainer()
  assert run_sweep(c, str(tmp_path), again) == [] and again.calls == []


def test_crash_mid_sweep_resumes_with_the_unfinished_trials(tmp_path):
  c = sweep_config()
  with pytest.raises(RuntimeError, match="simulated crash"):
    run_sweep(c, str(tmp_path), FakeTrainer(fail_on_call=4))
  assert len(results.read_records(results.results_path(str(tmp_path)))) == 3
  resumed = FakeTrainer()
  run_sweep(c, str(tmp_path), resumed)
  # round-robin order: A-000, RegNet-000, A-001 finished before the crash in RegNet-001; the rest, round-robin
  assert [os.path.basename(w) for w in resumed.calls] == ["AnyNetX_A-002", "RegNet-001", "RegNet-002"]
  assert len(results.read_records(results.results_path(str(tmp_path)))) == 6


def test_preempted_trial_is_not_recorded(tmp_path):
  c = sweep_config()
  run_sweep(c, str(tmp_path), FakeTrainer(preempt_on_call=2))
  assert [r["trial"] for r in results.read_records(results.results_path(str(tmp_path)))] == ["AnyNetX_A-000"]


def test_shards_cover_every_trial_exactly_once(tmp_path):
  c = sweep_config(n=4)
  dirs = [str(tmp_path / f"shard{i}") for i in range(3)]
  owned = []
  for i, d in enumerate(dirs):
    run_sweep(c, d, FakeTrainer(), Shard(i, 3))
    recs = results.read_records(results.results_path(d))
    assert all(r["index"] % 3 == i for r in recs)
    owned += [r["trial"] for r in recs]
  assert sorted(owned) == sorted(t.trial_id for t in plan_trials(c))
  assert len(results.load_dirs(dirs)) == 8


def test_shards_may_share_one_workdir(tmp_path):
  c = sweep_config()
  for i in range(2):
    run_sweep(c, str(tmp_path), FakeTrainer(), Shard(i, 2))
  assert len(results.read_records(results.results_path(str(tmp_path)))) == 6


def test_parse_shard():
  assert parse_shard("2/5") == Shard(2, 5)
  for bad in ("5/5", "1", "a/b", "-1/2"):
    with pytest.raises(SweepError, match="shard"):
      parse_shard(bad)


def test_torn_last_line_is_ignored_and_never_extended(tmp_path):
  path = str(tmp_path / "results.jsonl")
  results.append_record(path, {"trial": "a", "x": 1})
  results.append_record(path, {"trial": "b", "x": 2})
  with open(path, "ab") as f:
    f.write(b'{"trial": "c", "x"')  # a crash in the middle of a write
  assert [r["trial"] for r in results.read_records(path)] == ["a", "b"]
  results.append_record(path, {"trial": "d", "x": 4})
  assert [r["trial"] for r in results.read_records(path)] == ["a", "b", "d"]
  with open(path) as f:
    assert json.loads(f.read().splitlines()[-1]) == {"trial": "d", "x": 4}


def test_resume_after_a_torn_line_retrains_only_that_trial(tmp_path):
  c = sweep_config()
  run_sweep(c, str(tmp_path), FakeTrainer())
  path = results.results_path(str(tmp_path))
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: data.rstrip(b"\n").rfind(b"\n") + 1 + 25])  # the last record torn after 25 bytes
  again = FakeTrainer()
  run_sweep(c, str(tmp_path), again)
  assert [os.path.basename(w) for w in again.calls] == ["RegNet-002"]
  assert len(results.read_records(path)) == 6


def test_a_changed_config_is_refused(tmp_path):
  c = sweep_config()
  run_sweep(c, str(tmp_path), FakeTrainer())
  c.seed = 1
  with pytest.raises(SweepError, match="new --workdir"):
    run_sweep(c, str(tmp_path), FakeTrainer())


def test_shards_train_round_robin_over_spaces_so_a_partial_sweep_is_balanced(tmp_path):
  c = sweep_config(n=4)  # AnyNetX_A-000..003 are trials 0-3, RegNet-000..003 are 4-7
  trainer = FakeTrainer()
  run_sweep(c, str(tmp_path), trainer, Shard(0, 2))  # owns 0, 2, 4, 6
  ran = [os.path.basename(w) for w in trainer.calls]
  assert ran == ["AnyNetX_A-000", "RegNet-000", "AnyNetX_A-002", "RegNet-002"]
  assert [t.trial_id for t in round_robin(plan_trials(c))][:4] == ["AnyNetX_A-000", "RegNet-000", "AnyNetX_A-001",
                                                                  "RegNet-001"]


def _with_reuse(config, sweep="unit"):
  from regnet_jax.sweep.runner import train_fingerprint
  c = ml_collections.ConfigDict(config.to_dict())
  c.name = "exercise@unit"
  c.reuse = ml_collections.ConfigDict({"sweep": sweep, "train_fingerprint": train_fingerprint(c.train)})
  return c


def test_reuse_takes_the_reference_trials_of_the_same_models_and_trains_the_rest(tmp_path):
  ref_dir, ex_dir = str(tmp_path / "ref"), str(tmp_path / "ex")
  ref = sweep_config(n=2)
  run_sweep(ref, ref_dir, FakeTrainer())  # AnyNetX_A-000..001, RegNet-000..001
  ex = _with_reuse(sweep_config(n=3))  # the same streams: models 000..001 equal the reference's, 002 are new
  trainer = FakeTrainer()
  written = run_sweep(ex, ex_dir, trainer, reuse_from=[ref_dir])
  assert len(trainer.calls) == 2 and all(c.endswith("-002") for c in trainer.calls)
  by_trial = {r["trial"]: r for r in written}
  ref_records = {r["trial"]: r for r in results.read_records(results.results_path(ref_dir))}
  for tid in ("AnyNetX_A-000", "AnyNetX_A-001", "RegNet-000", "RegNet-001"):
    r = by_trial[tid]
    assert r["sweep"] == "exercise@unit" and r["reused_from"] == {"sweep": "unit", "trial": tid, "workdir": ref_dir}
    assert r["spec"] == ref_records[tid]["spec"] and r["best_error"] == ref_records[tid]["best_error"]
  assert by_trial["AnyNetX_A-002"].get("reused_from") is None
  # rerun: everything is recorded, nothing trains or is copied twice
  again = FakeTrainer()
  assert run_sweep(ex, ex_dir, again, reuse_from=[ref_dir]) == [] and again.calls == []
  assert len(results.read_records(results.results_path(ex_dir))) == 6


def test_reuse_needs_the_same_recipe_and_a_declared_reference(tmp_path):
  ref_dir = str(tmp_path / "ref")
  run_sweep(sweep_config(n=1), ref_dir, FakeTrainer())
  overridden = _with_reuse(sweep_config(n=1))
  overridden.train.seed = 1  # a command-line override after the config was built: another experiment
  trainer, logs = FakeTrainer(), []
  run_sweep(overridden, str(tmp_path / "a"), trainer, log=logs.append, reuse_from=[ref_dir])
  assert len(trainer.calls) == 2 and any("no trial is reused" in m for m in logs)
  other = _with_reuse(sweep_config(n=1), sweep="another")  # the records belong to sweep 'unit'
  trainer = FakeTrainer()
  run_sweep(other, str(tmp_path / "b"), trainer, reuse_from=[ref_dir])
  assert len(trainer.calls) == 2
  with pytest.raises(SweepError, match="declares no `reuse`"):
    run_sweep(sweep_config(n=1), str(tmp_path / "c"), FakeTrainer(), reuse_from=[ref_dir])
  with pytest.raises(SweepError, match="no .*results.jsonl; pass the workdir"):
    run_sweep(_with_reuse(sweep_config(n=1)), str(tmp_path / "d"), FakeTrainer(), reuse_from=[str(tmp_path / "x")])
