"""Two-space comparisons and the paper's five claims about the AnyNetX progression (Radosavovic et al. 2020,
sec. 3.1-3.3, figs. 5-9), judged from a sweep's errors.

For each pair (a, b): the two-sample KS test of the error EDFs, a bootstrap 95% interval of mean(b) - mean(a), and
bootstrap intervals of each space's best error. A claim "b better than a" is reproduced when the interval of the
mean difference lies below zero; "b about the same as a" when the KS test does not reject (p >= 0.05) and the
interval holds zero. With five pairs at 5% each, one false verdict in the table is not unlikely: read p-values near
the threshold as inconclusive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from regnet_jax.sweep import stats

ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Claim:
  a: str
  b: str
  relation: str  # "similar" or "better" (b's errors lower than a's)
  statement: str  # the paper's words, briefly
  same_best: bool = False  # the claim also says the best models match


PAPER_CLAIMS = (
    Claim("AnyNetX_A", "AnyNetX_B", "similar", "shared bottleneck ratio: EDF virtually unchanged (fig. 5)"),
    Claim("AnyNetX_B", "AnyNetX_C", "similar", "shared group width: EDF about unchanged (fig. 5)"),
    Claim("AnyNetX_C", "AnyNetX_D", "better", "non-decreasing widths: EDF substantially better (fig. 7)"),
    Claim("AnyNetX_D", "AnyNetX_E", "better", "non-decreasing depths: EDF better (fig. 7)"),
    Claim("AnyNetX_E", "RegNet", "better", "quantised linear widths: better on average, same best models (fig. 9)",
          same_best=True),
)


@dataclasses.dataclass(frozen=True)
class PairComparison:
  a: str
  b: str
  n_a: int
  n_b: int
  mean_a: float
  mean_b: float
  mean_diff: stats.Interval  # bootstrap of mean(b) - mean(a); the point estimate is mean_b - mean_a
  ks: stats.KsTest
  best_a: stats.Interval
  best_b: stats.Interval


def compare_pair(a: str, b: str, errors_a: Sequence[float], errors_b: Sequence[float],
                 num_resamples: int = 10_000, seed: int = 0) -> PairComparison:
  ea, eb = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
  return PairComparison(
      a, b, len(ea), len(eb), float(ea.mean()), float(eb.mean()),
      stats.bootstrap_mean_difference(ea, eb, num_resamples, seed=seed), stats.ks_test(ea, eb),
      stats.bootstrap_min(ea, num_resamples, seed=seed), stats.bootstrap_min(eb, num_resamples, seed=seed))


def verdict(claim: Claim, c: PairComparison) -> tuple[bool, str]:
  """(reproduced?, what the data shows in words)."""
  d, diff = c.mean_diff, c.mean_b - c.mean_a
  if d.high < 0:
    shift = f"{c.b} better on average by {-diff:.2f} points (95% CI {-d.high:.2f} to {-d.low:.2f})"
  elif d.low > 0:
    shift = f"{c.b} worse on average by {diff:.2f} points (95% CI {d.low:.2f} to {d.high:.2f})"
  else:
    shift = f"no significant difference in mean error (diff {diff:+.2f}, 95% CI {d.low:+.2f} to {d.high:+.2f})"
  edf = f"KS D={c.ks.statistic:.3f}, p={c.ks.pvalue:.2g}"
  if claim.relation == "similar":
    ok = c.ks.pvalue >= ALPHA and d.low <= 0 <= d.high
  elif claim.relation == "better":
    ok = d.high < 0
  else:
    raise ValueError(f"claim relation {claim.relation!r} must be 'similar' or 'better'")
  words = f"{shift}; {edf}"
  if claim.same_best:
    overlap = c.best_a.low <= c.best_b.high and c.best_b.low <= c.best_a.high
    best = (f"best {c.best_b.median:.2f} vs {c.best_a.median:.2f}, "
            f"intervals {'overlap' if overlap else 'do not overlap'}")
    ok = ok and overlap
    words += f"; {best}"
  return ok, words


def pair_table(comparisons: Sequence[PairComparison]) -> str:
  lines = ["| a -> b | n | mean a | mean b | mean b - a (95% CI) | KS D | KS p |", "|---|---|---:|---:|---|---:|---:|"]
  for c in comparisons:
    d = c.mean_diff
    lines.append(f"| {c.a} -> {c.b} | {c.n_a}, {c.n_b} | {c.mean_a:.2f} | {c.mean_b:.2f} | {c.mean_b - c.mean_a:+.2f} "
                 f"[{d.low:+.2f}, {d.high:+.2f}] | {c.ks.statistic:.3f} | {c.ks.pvalue:.2g} |")
  return "\n".join(lines) + "\n"


def claims_table(errors: Mapping[str, Sequence[float]], claims: Sequence[Claim] = PAPER_CLAIMS,
                 num_resamples: int = 10_000, seed: int = 0) -> str | None:
  """The claims whose two spaces are both in `errors` (space -> errors), one row each; None when none apply."""
  rows = []
  for claim in claims:
    if claim.a not in errors or claim.b not in errors:
      continue
    c = compare_pair(claim.a, claim.b, errors[claim.a], errors[claim.b], num_resamples, seed)
    ok, words = verdict(claim, c)
    rows.append(f"| {claim.b} vs {claim.a}: {claim.statement} | {c.mean_b:.2f} vs {c.mean_a:.2f} | "
                f"{'reproduced' if ok else 'not reproduced'} | {words} |")
  if not rows:
    return None
  return "\n".join(["| paper's claim | mean error b vs a | verdict | what the data shows |", "|---|---|---|---|",
                    *rows]) + "\n"
