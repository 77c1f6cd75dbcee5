"""python -m regnet_jax.sweep.analyze DIR [DIR ...] --out=FILE.png [--metric=best|final] [--bins=4]

Compares the design spaces recorded in the sweeps' results.jsonl files (shards and sweeps merge): error EDFs
(legend name | n | min | mean), the complexity-normalised EDF, bootstrap 95% intervals of the best and of the mean
error, error against depth, width, group width, bottleneck ratio and w_m (RegNet: sampled; AnyNet: the fitted one)
with binned mean +- std bands, and against the RegNet linear-fit error e_fit. For each adjacent pair of spaces (in
the registry's order: AnyNetX_A, B, C, D, E, RegNet, ...) a KS test of the EDFs and a bootstrap interval of the
difference in mean error, and, where the paper's spaces are present, the table of its five claims
(regnet_jax/sweep/claims.py). Writes FILE.png and FILE.md (the tables, also printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from regnet_jax.sweep import claims, stats
from regnet_jax.sweep.linear_fit import fit_regnet
from regnet_jax.sweep.results import load_dirs
from regnet_jax.sweep.spaces import space_names
from regnet_jax.specs_io import spec_from_dict

METRICS = {"best": "best_error", "final": "final_error"}


@dataclasses.dataclass(frozen=True)
class Model:
  """One finished trial, with the quantities the plots need."""

  error: float
  flops: int
  depth: int  # total blocks
  width: int  # widest stage
  group_w: int  # largest group width
  bottleneck: float  # largest b = 1 / bot_mul
  wm: float  # RegNet: sampled; AnyNet: of the best quantised linear fit
  e_fit: float
  seconds: float


@dataclasses.dataclass(frozen=True)
class Group:
  name: str
  models: tuple[Model, ...]

  def values(self, field: str) -> np.ndarray:
    return np.array([getattr(m, field) for m in self.models], dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Summary:
  name: str
  n: int
  min: float
  mean: float
  median: float
  best_ci: stats.Interval
  mean_ci: stats.Interval
  normalized_mean: float
  e_fit_median: float
  flops_mean: float
  seconds: float


def to_model(record: dict[str, Any], metric: str) -> Model:
  spec = spec_from_dict(record["spec"])
  fit = fit_regnet(spec)
  regnet = record.get("regnet")
  return Model(
      error=float(record[METRICS[metric]]), flops=int(record["flops"]), depth=sum(spec.depths),
      width=max(spec.widths), group_w=max(spec.group_ws), bottleneck=max(1 / b for b in spec.bot_muls),
      wm=float(regnet["wm"]) if regnet else fit.wm, e_fit=fit.e_fit, seconds=float(record.get("seconds", 0.0)))


def group_records(records: Sequence[dict[str, Any]], metric: str) -> list[Group]:
  """One group per (sweep, space), in first-seen order; names carry the sweep only when several sweeps are mixed."""
  keys: dict[tuple[str, str], list[Model]] = {}
  for r in records:
    keys.setdefault((str(r.get("sweep")), str(r["space"])), []).append(to_model(r, metric))
  several = len({sweep for sweep, _ in keys}) > 1
  return [Group(f"{sweep}/{space}" if several else space, tuple(models)) for (sweep, space), models in keys.items()]


def summarize(groups: Sequence[Group], num_bins: int, num_resamples: int, seed: int) -> list[Summary]:
  edges = stats.complexity_bin_edges(np.concatenate([g.values("flops") for g in groups]), num_bins)
  out = []
  for g in groups:
    errs = g.values("error")
    weights = stats.normalized_weights(g.values("flops"), edges)
    out.append(Summary(
        name=g.name, n=len(errs), min=float(errs.min()), mean=float(errs.mean()), median=float(np.median(errs)),
        best_ci=stats.bootstrap_min(errs, num_resamples, seed=seed),
        mean_ci=stats.bootstrap_mean(errs, num_resamples, seed=seed), normalized_mean=float(weights @ errs),
        e_fit_median=float(np.median(g.values("e_fit"))), flops_mean=float(g.values("flops").mean()),
        seconds=float(g.values("seconds").sum())))
  return out


def markdown_table(summaries: Sequence[Summary], metric: str) -> str:
  lines = [f"error = {metric} top-1 error (%); best / mean 95% = bootstrap intervals of the minimum / mean error; "
           "norm. mean = mean under the complexity-normalised weights (NDS); e_fit = RegNet linear-fit error "
           "(median)", "",
           "| space | n | min | best 95% CI | mean | mean 95% CI | median | norm. mean | e_fit | mean MF | train s |",
           "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|"]
  for s in sorted(summaries, key=lambda s: s.mean):
    lines.append(f"| {s.name} | {s.n} | {s.min:.2f} | [{s.best_ci.low:.2f}, {s.best_ci.high:.2f}] | {s.mean:.2f} | "
                 f"[{s.mean_ci.low:.2f}, {s.mean_ci.high:.2f}] | {s.median:.2f} | {s.normalized_mean:.2f} | "
                 f"{s.e_fit_median:.3f} | {s.flops_mean / 1e6:.2f} | {s.seconds:.0f} |")
  return "\n".join(lines) + "\n"


def progression_order(groups: Sequence[Group]) -> list[Group]:
  """Groups in the registry's order of their space names (AnyNetX_A..E, RegNet, exercises); others keep their
  first-seen order after them. Names carrying a sweep ('sweep/space') order by their space part."""
  rank = {name: i for i, name in enumerate(space_names())}
  return sorted(groups, key=lambda g: rank.get(g.name.rsplit("/", 1)[-1], len(rank)))


def comparison_tables(groups: Sequence[Group], num_resamples: int, seed: int) -> str:
  """Adjacent-pair tests in progression order, and the paper's claims table where its spaces are all here."""
  ordered = progression_order(groups)
  pairs = [claims.compare_pair(a.name, b.name, a.values("error"), b.values("error"), num_resamples, seed)
           for a, b in zip(ordered, ordered[1:])]
  out = ""
  if pairs:
    out += ("\nAdjacent spaces: two-sample KS test of the error EDFs and a bootstrap 95% interval of the difference "
            "in mean error (negative: b is better)\n\n" + claims.pair_table(pairs))
  table = claims.claims_table({g.name: g.values("error") for g in groups}, num_resamples=num_resamples, seed=seed)
  if table:
    out += "\nThe paper's claims (sec. 3), judged as regnet_jax/sweep/claims.py states\n\n" + table
  return out


_TRENDS = (("depth", "depth d (blocks)", False), ("width", "widest stage w", True),
           ("group_w", "group width g (max)", True), ("bottleneck", "bottleneck ratio b (max)", True),
           ("wm", "w_m (RegNet; AnyNet: fitted)", False), ("e_fit", "linear-fit error e_fit", False))


def plot(groups: Sequence[Group], summaries: Sequence[Summary], out: str, metric: str, num_bins: int) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(3, 3, figsize=(15, 12))
  axes = axes.ravel()
  colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(groups))]
  edges = stats.complexity_bin_edges(np.concatenate([g.values("flops") for g in groups]), num_bins)
  for g, s, c in zip(groups, summaries, colors):
    x, y = stats.edf_steps(g.values("error"))
    axes[0].step(np.r_[x[0], x], np.r_[0.0, y], where="post", color=c,
                 label=f"{g.name} | {s.n} | {s.min:.1f} | {s.mean:.1f}")
    x, y = stats.edf_steps(g.values("error"), stats.normalized_weights(g.values("flops"), edges))
    axes[1].step(np.r_[x[0], x], np.r_[0.0, y], where="post", color=c, label=f"{g.name} | {s.normalized_mean:.1f}")
  axes[0].set_title("error EDF")
  axes[0].legend(title="name | n | min | mean", fontsize=8, loc="lower right")
  axes[1].set_title(f"complexity-normalised EDF ({num_bins} log-flops bins)")
  axes[1].legend(title="name | weighted mean", fontsize=8, loc="lower right")
  for ax in axes[:2]:
    ax.set_xlabel(f"{metric} error (%)")
    ax.set_ylabel("cumulative probability")
  ys = np.arange(len(groups))
  for i, (s, c) in enumerate(zip(summaries, colors)):
    ci = s.best_ci
    axes[2].errorbar([ci.median], [i], xerr=[[ci.median - ci.low], [ci.high - ci.median]], fmt="o", color=c,
                     capsize=4)
  axes[2].set_yticks(ys, [g.name for g in groups])
  axes[2].set_xlabel(f"minimum {metric} error (%)")
  axes[2].set_title("bootstrap 95% interval of the best error")
  for ax, (field, label, log) in zip(axes[3:], _TRENDS):
    for g, c in zip(groups, colors):
      x, y = g.values(field), g.values("error")
      ax.scatter(x, y, s=12, alpha=0.6, color=c, label=g.name)
      t = stats.binned_trend(x, y, num_bins, log=log)
      ax.plot(t.x, t.mean, "-", color=c)
      ax.fill_between(t.x, t.mean - t.std, t.mean + t.std, color=c, alpha=0.15)
    if log:
      ax.set_xscale("log", base=2)
    ax.set_xlabel(label)
    ax.set_ylabel(f"{metric} error (%)")
  axes[3].legend(fontsize=8)
  fig.suptitle("design-space comparison (bands: binned mean +- std)")
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m regnet_jax.sweep.analyze", description=__doc__.split("\n\n")[1])
  parser.add_argument("dirs", nargs="+", help="sweep workdirs (or results.jsonl files)")
  parser.add_argument("--out", required=True, help="PNG to write; the table goes next to it as .md")
  parser.add_argument("--metric", choices=sorted(METRICS), default="best",
                      help="best (minimum over evaluations, as pycls) or final error")
  parser.add_argument("--bins", type=int, default=4, help="complexity bins (normalised EDF) and trend bins")
  parser.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples")
  parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
  parser.add_argument("--labels", default=None,
                      help="comma-separated names for DIRS, in order: keeps runs of one sweep config apart "
                           "(e.g. --labels=200steps,1epoch); default: the sweep names the results record")
  args = parser.parse_args(argv)
  try:
    records = load_dirs(args.dirs, args.labels.split(",") if args.labels else None)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not records:
    print(f"error: no finished trials in {args.dirs}", file=sys.stderr)
    return 2
  groups = group_records(records, args.metric)
  summaries = summarize(groups, args.bins, args.bootstrap, args.seed)
  table = markdown_table(summaries, args.metric) + comparison_tables(groups, args.bootstrap, args.seed)
  print(table)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write(table)
  plot(groups, summaries, args.out, args.metric, args.bins)
  print(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
