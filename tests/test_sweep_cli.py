"""The sample and analyze CLIs and the shipped sweep configs (fake-trained; the real CLI trains)."""

import importlib.util
import json
import os

import pytest

from regnet_jax.sweep import analyze, results, sample
from regnet_jax.sweep.runner import Shard, plan_trials, run_sweep
from test_sweep_runner import FakeTrainer, sweep_config  # pytest puts tests/ on sys.path

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "sweeps")


def test_sample_cli_json(capsys):
  assert sample.main(["--space=RegNet", "--n=3", "--flops=2M,4M", "--image-size=32", "--channels=1",
                      "--num-classes=10", "--seed=1", "--json"]) == 0
  got = json.loads(capsys.readouterr().out)
  assert len(got) == 3 and all(2e6 <= g["flops"] <= 4e6 and g["space"] == "RegNet" for g in got)
  assert {"depth", "w0", "wa", "wm", "bot_mul", "group_w"} == set(got[0]["regnet"])
  assert sample.main(["--space=nope", "--n=1"]) == 2
  assert "unknown design space" in capsys.readouterr().err


def test_parse_bounds_suffixes():
  assert sample.parse_bounds("360M,0.4G") == (360e6, 400e6)
  assert sample.parse_bounds("2K,1e5") == (2e3, 1e5)
  with pytest.raises(Exception, match="LOW <= HIGH"):
    sample.parse_bounds("4M,2M")


def test_analyze_writes_png_and_table(tmp_path, capsys):
  c = sweep_config(n=6)
  for i in range(2):
    run_sweep(c, str(tmp_path / f"s{i}"), FakeTrainer(), Shard(i, 2))
  out = str(tmp_path / "report" / "edf.png")
  assert analyze.main([str(tmp_path / "s0"), str(tmp_path / "s1"), f"--out={out}", "--bootstrap=200",
                       "--bins=3"]) == 0
  printed = capsys.readouterr().out
  assert os.path.getsize(out) > 10_000
  table = open(str(tmp_path / "report" / "edf.md")).read()
  assert table in printed
  rows = [line for line in table.splitlines() if line.startswith(("| AnyNetX_A |", "| RegNet |"))]
  assert len(rows) == 2 and all("| 6 |" in r for r in rows)
  assert "| AnyNetX_A -> RegNet | 6, 6 |" in table


def test_analyze_groups_and_summaries_by_hand(tmp_path):
  c = sweep_config(n=4)
  run_sweep(c, str(tmp_path), FakeTrainer())
  recs = results.load_dirs([str(tmp_path)])
  groups = analyze.group_records(recs, "final")
  assert [g.name for g in groups] == ["AnyNetX_A", "RegNet"]
  summaries = analyze.summarize(groups, num_bins=2, num_resamples=100, seed=0)
  for g, s in zip(groups, summaries):
    errs = sorted(r["final_error"] for r in recs if r["space"] == g.name)
    assert s.n == 4 and s.min == pytest.approx(errs[0]) and s.mean == pytest.approx(sum(errs) / 4)
  assert summaries[1].e_fit_median < 0.05  # RegNets fit their own linear parametrisation


def test_missing_results_dir_is_an_error(tmp_path, capsys):
  assert analyze.main([str(tmp_path / "nothing"), f"--out={tmp_path}/x.png"]) == 2
  assert "no results file" in capsys.readouterr().err


def _load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_fashion_mnist_cpu_config_plans_60_models():
  c = _load_config("fashion_mnist_cpu")
  trials = plan_trials(c)
  assert len(trials) >= 60
  assert {t.sample.space for t in trials} >= {"AnyNetX_A", "AnyNetX_E", "RegNet"}
  lo, hi = c.regime.flops
  assert all(lo <= t.sample.flops <= hi for t in trials)
  assert c.train.image_size == c.regime.image_size


def test_labels_keep_two_runs_of_one_sweep_config_apart(tmp_path, capsys):
  # Same config (same sweep name, same trial ids) run twice, e.g. with two training budgets: without labels
  # the second run's trials look like duplicate shard records and are dropped.
  c = sweep_config(n=3)
  for d in ("short", "long"):
    run_sweep(c, str(tmp_path / d), FakeTrainer())
  dirs = [str(tmp_path / "short"), str(tmp_path / "long")]
  assert len(results.load_dirs(dirs)) == 6
  recs = results.load_dirs(dirs, ["200 steps", "1 epoch"])
  assert len(recs) == 12
  names = [g.name for g in analyze.group_records(recs, "best")]
  assert names == ["200 steps/AnyNetX_A", "200 steps/RegNet", "1 epoch/AnyNetX_A", "1 epoch/RegNet"]
  out = str(tmp_path / "edf.png")
  assert analyze.main(dirs + [f"--out={out}", "--labels=a,b", "--bootstrap=50", "--bins=2"]) == 0
  assert "| b/RegNet | 3 |" in capsys.readouterr().out
  assert analyze.main(dirs + [f"--out={out}", "--labels=a"]) == 2
  assert "1 labels for 2 directories" in capsys.readouterr().err
