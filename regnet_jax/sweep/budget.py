"""python -m regnet_jax.sweep.budget SHORT_DIR LONG_DIR [--metric=best|final]

Is a sweep's training budget long enough? Compares the same trials (matched by trial id and spec) trained with two
budgets: rank agreement (Spearman, Kendall, top-quarter overlap) over all models and per space, and each budget's
mean error. The paper's method only needs rankings to be stable, not errors to have converged: a budget whose
ranking agrees with a 2-4x longer one's is a usable proxy (the pilot of issue 15).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from regnet_jax.sweep import stats
from regnet_jax.sweep.analyze import METRICS
from regnet_jax.sweep.results import load_dirs


def paired(short: Sequence[dict[str, Any]], long: Sequence[dict[str, Any]]
           ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
  """(short, long) record pairs of the trials both runs finished, in the short run's order; a trial id whose spec
  differs between the runs is an error (two different sweeps were passed)."""
  by_id = {r["trial"]: r for r in long}
  pairs = []
  for r in short:
    other = by_id.get(r["trial"])
    if other is None:
      continue
    if other["spec"] != r["spec"]:
      raise ValueError(f"trial {r['trial']} trained different models in the two runs; compare runs of one sweep "
                       "config that differ only in the budget")
    pairs.append((r, other))
  return pairs


def agreement_table(pairs, metric: str = "best") -> str:
  key = METRICS[metric]
  groups: dict[str, list] = {"all": pairs}
  for p in pairs:
    groups.setdefault(p[0]["space"], []).append(p)
  steps = (pairs[0][0].get("train_steps"), pairs[0][1].get("train_steps")) if pairs else (None, None)
  lines = [f"{metric} error (%), {steps[0]} vs {steps[1]} steps; top-k = overlap of the two best quarters", "",
           "| models | n | Spearman rho (p) | Kendall tau (p) | top-k overlap | mean error short | mean error long |",
           "|---|---:|---|---|---|---:|---:|"]
  for name, ps in groups.items():
    x = np.array([a[key] for a, _ in ps], dtype=np.float64)
    y = np.array([b[key] for _, b in ps], dtype=np.float64)
    if len(ps) < 3:
      lines.append(f"| {name} | {len(ps)} | (fewer than 3) | | | {x.mean():.2f} | {y.mean():.2f} |")
      continue
    a = stats.rank_agreement(x, y)
    lines.append(f"| {name} | {a.n} | {a.spearman:.3f} ({a.spearman_p:.2g}) | {a.kendall:.3f} ({a.kendall_p:.2g}) | "
                 f"{a.top_k_overlap:.2f} of {a.top_k} | {x.mean():.2f} | {y.mean():.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m regnet_jax.sweep.budget", description=__doc__.split("\n\n")[1])
  parser.add_argument("short", help="sweep workdir (or results.jsonl) of the shorter budget")
  parser.add_argument("long", help="the same sweep trained with the longer budget")
  parser.add_argument("--metric", choices=sorted(METRICS), default="best")
  args = parser.parse_args(argv)
  try:
    short, long = load_dirs([args.short]), load_dirs([args.long])
    pairs = paired(short, long)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if len(pairs) < 3:
    print(f"error: only {len(pairs)} trials finished in both runs; rank agreement needs at least 3",
          file=sys.stderr)
    return 2
  print(agreement_table(pairs, args.metric))
  return 0


if __name__ == "__main__":
  sys.exit(main())
