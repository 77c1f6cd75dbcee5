"""Mean and mean-difference bootstraps, the KS test, rank agreement, the claims verdicts, the budget CLI, and the
progression sweep config (its shared cifar stem and its pilot)."""

import copy
import os

import numpy as np
import pytest
from scipy import stats as sp

from regnet_jax.sweep import analyze, budget, claims, results, stats
from regnet_jax.sweep.runner import Shard, plan_trials, run_sweep
from regnet_jax.config_files import load_module
from test_sweep_runner import FakeTrainer, sweep_config  # pytest puts tests/ on sys.path

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "sweeps", "fmnist_progression.py")


def test_bootstrap_mean_and_difference_cover_the_truth_and_shrink_with_n():
  rng = np.random.default_rng(0)
  a = rng.normal(20.0, 2.0, 400)
  b = rng.normal(18.0, 2.0, 400)
  ci = stats.bootstrap_mean(a, 2000, seed=1)
  assert ci.low < a.mean() < ci.high and ci.high - ci.low < 0.6  # 2 * 1.96 * 2 / sqrt(400) = 0.39
  d = stats.bootstrap_mean_difference(a, b, 2000, seed=1)
  assert d.high < 0 and d.low < b.mean() - a.mean() < d.high
  small = stats.bootstrap_mean_difference(a[:20], b[:20], 2000, seed=1)
  assert small.high - small.low > 2 * (d.high - d.low)
  assert stats.bootstrap_mean([3.0, 3.0]) == stats.Interval(3.0, 3.0, 3.0)
  # [0, 1]: a resample's mean is 0, 0.5 or 1 with p = 1/4, 1/2, 1/4, so the 2.5th / 97.5th percentiles are 0 and 1
  assert stats.bootstrap_mean([0.0, 1.0], 10_000, seed=0) == stats.Interval(0.0, 0.5, 1.0)
  with pytest.raises(ValueError, match="both groups"):
    stats.bootstrap_mean_difference([], [1.0])


def test_ks_test_matches_the_definition():
  a, b = [1.0, 2.0, 3.0, 4.0], [3.5, 5.0, 6.0, 7.0]
  # EDFs differ most just after 3.0: F_a = 3/4, F_b = 0
  t = stats.ks_test(a, b)
  assert t.statistic == pytest.approx(0.75)
  assert t.pvalue == pytest.approx(sp.ks_2samp(a, b).pvalue)
  assert stats.ks_test(a, a).pvalue == pytest.approx(1.0)


def test_rank_agreement():
  x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
  perfect = stats.rank_agreement(x, [10 * v for v in x])
  assert perfect.spearman == pytest.approx(1.0) and perfect.kendall == pytest.approx(1.0)
  assert perfect.top_k == 2 and perfect.top_k_overlap == 1.0
  reverse = stats.rank_agreement(x, x[::-1])
  assert reverse.spearman == pytest.approx(-1.0) and reverse.top_k_overlap == 0.0
  swapped = stats.rank_agreement(x, [2, 1, 3, 4, 5, 6, 7, 8])  # one adjacent swap: tau = 1 - 2 * 1 / 28
  assert swapped.kendall == pytest.approx(1 - 2 / 28) and swapped.top_k_overlap == 1.0
  with pytest.raises(ValueError, match=">= 3"):
    stats.rank_agreement([1, 2], [1, 2])


def _pair(shift, n=200, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(20.0, 2.0, n), rng.normal(20.0 + shift, 2.0, n)


@pytest.mark.parametrize("relation,shift,expected", [
    ("better", -2.0, True), ("better", 0.0, False), ("better", 2.0, False),
    ("similar", 0.0, True), ("similar", -2.0, False), ("similar", 2.0, False)])
def test_claim_verdicts(relation, shift, expected):
  a, b = _pair(shift)
  claim = claims.Claim("A", "B", relation, "test")
  ok, words = claims.verdict(claim, claims.compare_pair("A", "B", a, b, 2000))
  assert ok is expected
  if shift < 0:
    assert "B better on average by" in words
  elif shift > 0:
    assert "B worse on average by" in words
  else:
    assert "no significant difference" in words


def test_same_best_claim_needs_overlapping_best_intervals():
  a, _ = _pair(0.0)
  b = a.min() + 0.5 * (a - a.min())  # better on average, the same best model (the paper's RegNet vs AnyNetX_E)
  claim = claims.Claim("A", "B", "better", "test", same_best=True)
  ok, words = claims.verdict(claim, claims.compare_pair("A", "B", a, b, 2000))
  assert ok and "intervals overlap" in words
  b_far = a - 5.0  # better best models too: "same best models" fails
  ok, words = claims.verdict(claim, claims.compare_pair("A", "B", a, b_far, 2000))
  assert not ok and "do not overlap" in words
  with pytest.raises(ValueError, match="relation"):
    claims.verdict(claims.Claim("A", "B", "worse", "x"), claims.compare_pair("A", "B", a, b, 100))


def test_claims_table_lists_the_claims_whose_spaces_are_present():
  rng = np.random.default_rng(0)
  errors = {name: rng.normal(20, 2, 50) for name in ("AnyNetX_A", "AnyNetX_B", "AnyNetX_C")}
  table = claims.claims_table(errors, num_resamples=500)
  rows = [line for line in table.splitlines() if line.startswith("| AnyNetX")]
  assert len(rows) == 2 and rows[0].startswith("| AnyNetX_B vs AnyNetX_A")
  assert claims.claims_table({"RegNet": [1.0, 2.0]}) is None


def test_analyze_prints_adjacent_pairs_in_progression_order(tmp_path, capsys):
  c = sweep_config(n=5)
  c.spaces = {"RegNet": {"n": 5}, "AnyNetX_E": {"n": 5}, "AnyNetX_A": {"n": 5}}  # not the registry's order
  run_sweep(c, str(tmp_path), FakeTrainer())
  out = str(tmp_path / "edf.png")
  assert analyze.main([str(tmp_path), f"--out={out}", "--bootstrap=200", "--bins=2"]) == 0
  printed = capsys.readouterr().out
  assert "| AnyNetX_A -> AnyNetX_E | 5, 5 |" in printed and "| AnyNetX_E -> RegNet | 5, 5 |" in printed
  assert "| RegNet vs AnyNetX_E: quantised linear widths" in printed
  assert "mean 95% CI" in open(str(tmp_path / "edf.md")).read()


class ScaledTrainer(FakeTrainer):
  """A longer budget: lower errors, the same ranking except that the first trial gets much worse."""

  def __call__(self, config, workdir):
    out = dict(super().__call__(config, workdir))
    out["best_eval_accuracy"] = out["best_eval_accuracy"] + 0.05
    if len(self.calls) == 1:
      out["best_eval_accuracy"] = 0.1
    out["step"] = 20
    return out


def test_budget_cli_pairs_trials_and_reports_rank_agreement(tmp_path, capsys):
  c = sweep_config(n=6)
  run_sweep(c, str(tmp_path / "short"), FakeTrainer())
  run_sweep(c, str(tmp_path / "long"), ScaledTrainer())
  assert budget.main([str(tmp_path / "short"), str(tmp_path / "long")]) == 0
  printed = capsys.readouterr().out
  assert "10 vs 20 steps" in printed
  rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
  assert "| 12 |" in rows["all"] and "| 6 |" in rows["RegNet"]
  short, long = (results.load_dirs([str(tmp_path / d)]) for d in ("short", "long"))
  pairs = budget.paired(short, long)
  x = [a["best_error"] for a, _ in pairs]
  y = [b["best_error"] for _, b in pairs]
  assert f"{sp.spearmanr(x, y).statistic:.3f}" in rows["all"]
  other = copy.deepcopy(long)
  other[0]["spec"] = dict(other[0]["spec"], stem_w=99)
  with pytest.raises(ValueError, match="different models"):
    budget.paired(short, other)
  assert budget.main([str(tmp_path / "short"), str(tmp_path / "missing")]) == 2


def test_space_fields_apply_to_every_space_unless_a_space_overrides_them():
  c = sweep_config(n=2)
  c.space_fields = {"stem_type": "cifar"}
  c.spaces = {"AnyNetX_A": {"n": 2}, "RegNet": {"n": 2, "stem_type": "simple"}}
  by_space = {t.sample.space: t.sample.spec.stem_type for t in plan_trials(c)}
  assert by_space == {"AnyNetX_A": "cifar", "RegNet": "simple"}


def test_progression_config_pilot_is_the_head_of_the_full_sweep():
  module = load_module(CONFIG)
  full, pilot = module.get_config(), module.get_config("pilot")
  assert pilot.name == full.name  # the pilot's trials count towards the full run
  pilot_trials = plan_trials(pilot)
  assert len(pilot_trials) == 6 * module.PILOT_MODELS
  assert [s for s in full.spaces] == ["AnyNetX_A", "AnyNetX_B", "AnyNetX_C", "AnyNetX_D", "AnyNetX_E", "RegNet"]
  small = copy.deepcopy(full)
  for s in small.spaces:
    small.spaces[s].n = module.PILOT_MODELS + 1  # sampling all 100 per space takes a while; the prefix is enough
  by_id = {t.trial_id: t.sample for t in plan_trials(small)}
  lo, hi = full.regime.flops
  for t in pilot_trials:
    assert by_id[t.trial_id] == t.sample
    assert t.sample.spec.stem_type == "cifar" and lo <= t.sample.flops <= hi
  assert full.train.image_size == full.regime.image_size == 32
  with pytest.raises(ValueError, match="pilot"):
    module.get_config("nope")
