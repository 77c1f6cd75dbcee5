"""Statistics for comparing design spaces: error EDFs (plain and complexity-normalised), bootstrap intervals of the
best and the mean error and of a difference in means, the two-sample Kolmogorov-Smirnov test, rank correlation
between two budgets, binned trends. Numpy functions (scipy for the KS and rank-correlation p-values, which JAX
already installs); randomness only through an explicit seed."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def edf(errors: Sequence[float], at: Sequence[float], weights: Sequence[float] | None = None) -> np.ndarray:
  """F(e) = sum_i w_i 1[e_i < e] at each e in `at`; w_i = 1/n by default (paper eq. 1)."""
  errs = np.asarray(errors, dtype=np.float64)
  w = np.full(len(errs), 1 / len(errs)) if weights is None else np.asarray(weights, dtype=np.float64)
  if len(w) != len(errs) or not np.isclose(w.sum(), 1.0):
    raise ValueError(f"weights must be {len(errs)} numbers summing to 1, got {len(w)} summing to {w.sum()}")
  at = np.asarray(at, dtype=np.float64)
  return (w[None, :] * (errs[None, :] < at[:, None])).sum(axis=1)


def edf_steps(errors: Sequence[float], weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(x, y) of the EDF's staircase: sorted errors and the cumulative weight reached at each (for plotting)."""
  errs = np.asarray(errors, dtype=np.float64)
  w = np.full(len(errs), 1 / len(errs)) if weights is None else np.asarray(weights, dtype=np.float64)
  order = np.argsort(errs, kind="stable")
  return errs[order], np.cumsum(w[order])


def complexity_bin_edges(values: Sequence[float], num_bins: int, log: bool = True) -> np.ndarray:
  """`num_bins` equal-width bins (in log space by default) spanning all `values` (pool every compared sweep)."""
  v = np.asarray(values, dtype=np.float64)
  if num_bins < 1 or len(v) == 0:
    raise ValueError(f"need num_bins >= 1 and some values, got num_bins={num_bins}, {len(v)} values")
  lo, hi = (np.log(v.min()), np.log(v.max())) if log else (v.min(), v.max())
  edges = np.linspace(lo, hi, num_bins + 1) if hi > lo else np.array([lo - 0.5, hi + 0.5])
  return np.exp(edges) if log else edges


def normalized_weights(complexities: Sequence[float], edges: Sequence[float]) -> np.ndarray:
  """NDS (Radosavovic et al. 2019) weights: each occupied complexity bin gets equal total weight, split evenly
  among its models, so the weighted complexity distribution is uniform over the occupied bins."""
  c = np.asarray(complexities, dtype=np.float64)
  edges = np.asarray(edges, dtype=np.float64)
  bins = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, len(edges) - 2)
  counts = np.bincount(bins, minlength=len(edges) - 1)
  occupied = np.count_nonzero(counts)
  return 1.0 / (occupied * counts[bins])


@dataclasses.dataclass(frozen=True)
class Interval:
  low: float
  median: float
  high: float


def bootstrap_min(errors: Sequence[float], num_resamples: int = 10_000, alpha: float = 0.05,
                  seed: int = 0, sample_size: int | None = None) -> Interval:
  """Bootstrap interval of the best (minimum) error: resample `sample_size` (default n) errors with replacement,
  take each resample's minimum, report the alpha/2, 50 and 1 - alpha/2 percentiles."""
  errs = np.asarray(errors, dtype=np.float64)
  if len(errs) == 0:
    raise ValueError("bootstrap_min needs at least one error")
  m = len(errs) if sample_size is None else sample_size
  idx = np.random.default_rng(seed).integers(0, len(errs), size=(num_resamples, m))
  return _percentiles(errs[idx].min(axis=1), alpha)


def bootstrap_mean(errors: Sequence[float], num_resamples: int = 10_000, alpha: float = 0.05,
                   seed: int = 0) -> Interval:
  """Percentile-bootstrap interval of the mean error (resamples of n with replacement)."""
  errs = np.asarray(errors, dtype=np.float64)
  if len(errs) == 0:
    raise ValueError("bootstrap_mean needs at least one error")
  idx = np.random.default_rng(seed).integers(0, len(errs), size=(num_resamples, len(errs)))
  return _percentiles(errs[idx].mean(axis=1), alpha)


def bootstrap_mean_difference(a: Sequence[float], b: Sequence[float], num_resamples: int = 10_000,
                              alpha: float = 0.05, seed: int = 0) -> Interval:
  """Percentile-bootstrap interval of mean(b) - mean(a), resampling each group independently (negative: b's
  errors are lower on average)."""
  a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
  if len(a) == 0 or len(b) == 0:
    raise ValueError(f"bootstrap_mean_difference needs errors in both groups, got {len(a)} and {len(b)}")
  rng = np.random.default_rng(seed)
  ma = a[rng.integers(0, len(a), size=(num_resamples, len(a)))].mean(axis=1)
  mb = b[rng.integers(0, len(b), size=(num_resamples, len(b)))].mean(axis=1)
  return _percentiles(mb - ma, alpha)


def _percentiles(values: np.ndarray, alpha: float) -> Interval:
  lo, med, hi = np.percentile(values, [100 * alpha / 2, 50, 100 * (1 - alpha / 2)])
  return Interval(float(lo), float(med), float(hi))


@dataclasses.dataclass(frozen=True)
class KsTest:
  """Two-sample Kolmogorov-Smirnov: D = max |F_a - F_b| of the two error EDFs, and its two-sided p-value."""

  statistic: float
  pvalue: float


def ks_test(a: Sequence[float], b: Sequence[float]) -> KsTest:
  from scipy import stats as sp  # imported here: only the analysis needs scipy
  a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
  if len(a) == 0 or len(b) == 0:
    raise ValueError(f"ks_test needs errors in both groups, got {len(a)} and {len(b)}")
  r = sp.ks_2samp(a, b)
  return KsTest(float(r.statistic), float(r.pvalue))


@dataclasses.dataclass(frozen=True)
class RankAgreement:
  """How well one budget's errors rank models like another's: Spearman rho, Kendall tau (with p-values), and
  the overlap of the two top-k sets (k = a quarter of the models, at least 1)."""

  n: int
  spearman: float
  spearman_p: float
  kendall: float
  kendall_p: float
  top_k: int
  top_k_overlap: float


def rank_agreement(x: Sequence[float], y: Sequence[float]) -> RankAgreement:
  from scipy import stats as sp
  x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
  if len(x) != len(y) or len(x) < 3:
    raise ValueError(f"rank_agreement needs two equal-length series of >= 3 values, got {len(x)} and {len(y)}")
  rho, tau = sp.spearmanr(x, y), sp.kendalltau(x, y)
  k = max(1, len(x) // 4)
  top_x, top_y = set(np.argsort(x, kind="stable")[:k]), set(np.argsort(y, kind="stable")[:k])
  return RankAgreement(len(x), float(rho.statistic), float(rho.pvalue), float(tau.statistic), float(tau.pvalue),
                       k, len(top_x & top_y) / k)


@dataclasses.dataclass(frozen=True)
class Trend:
  """Per-bin centre (mean x), mean and std of y, and the 25/75th y percentiles."""

  x: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  p25: np.ndarray
  p75: np.ndarray


def binned_trend(x: Sequence[float], y: Sequence[float], num_bins: int = 5, log: bool = False) -> Trend:
  """y's mean / std / quartiles per bin of x: one bin per distinct x when there are at most `num_bins` of them
  (b, g), else bins holding (nearly) equal numbers of models (quantile bins)."""
  x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
  if len(x) == 0:
    raise ValueError("binned_trend needs at least one point")
  values = np.unique(x)
  if len(values) <= num_bins:
    groups = [np.flatnonzero(x == v) for v in values]
  else:
    order = np.argsort(x, kind="stable")
    groups = [g for g in np.array_split(order, num_bins) if len(g)]
  centre = (lambda v: float(np.exp(np.mean(np.log(v))))) if log else (lambda v: float(np.mean(v)))
  return Trend(
      x=np.array([centre(x[g]) for g in groups]),
      mean=np.array([y[g].mean() for g in groups]),
      std=np.array([y[g].std() for g in groups]),
      p25=np.array([np.percentile(y[g], 25) for g in groups]),
      p75=np.array([np.percentile(y[g], 75) for g in groups]),
  )
