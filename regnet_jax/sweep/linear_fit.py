"""The RegNet quantised linear fit of a model's per-block widths (paper sec. 3.3, Fig. 8/9).

"Given a model, we compute its fit by setting d to the network depth and performing a grid search over w0, wa and
wm to minimize the mean log-ratio (denoted by e_fit) of predicted to observed per-block widths."  The predicted
widths are the quantised ones (`regnet.generate_regnet`): u_j = w0 + wa*j, k_j = round(log(u_j/w0)/log(wm)),
w_j = round(w0*wm^k_j/q)*q; e_fit = mean_j |log(w_j / w_obs_j)| (natural log), so an exact RegNet fits with 0.

The search is a coarse grid, then a finer grid around the best few coarse points; all numpy, vectorised over the
grid, so one model takes a few tens of milliseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from regnet_jax.specs import AnyNetSpec


@dataclasses.dataclass(frozen=True)
class LinearFit:
  w0: int
  wa: float
  wm: float
  e_fit: float


@dataclasses.dataclass(frozen=True)
class FitGrid:
  """Search ranges: w0 multiples of `quant` in w0_range, wa log-spaced (plus 0), wm linear in wm_range."""

  w0_range: tuple[int, int] = (8, 1024)
  wa_range: tuple[float, float] = (0.1, 1024.0)
  wm_range: tuple[float, float] = (1.5, 3.0)
  coarse_w0: int = 64
  coarse_wa: int = 48
  coarse_wm: int = 31
  fine: int = 21
  top_k: int = 4
  rounds: int = 3
  quant: int = 8


def block_widths(spec: AnyNetSpec) -> tuple[int, ...]:
  """Per-block output widths: each stage width repeated `depth` times."""
  return tuple(s.width for s in spec.stages for _ in range(s.depth))


def predicted_widths(w0, wa, wm, depth: int, quant: int = 8) -> np.ndarray:
  """Quantised RegNet widths, broadcasting over arrays of w0, wa, wm; the block index is the last axis."""
  w0, wa, wm = (np.asarray(v, dtype=np.float64)[..., None] for v in (w0, wa, wm))
  u = w0 + wa * np.arange(depth)
  k = np.round(np.log(u / w0) / np.log(wm))
  return np.round(w0 * np.power(wm, k) / quant) * quant


def fit_errors(observed: Sequence[int], w0, wa, wm, quant: int = 8) -> np.ndarray:
  """e_fit of the observed per-block widths for every (broadcast) parameter triple."""
  obs = np.asarray(observed, dtype=np.float64)
  pred = np.maximum(predicted_widths(w0, wa, wm, len(obs), quant), quant)
  return np.mean(np.abs(np.log(pred) - np.log(obs)), axis=-1)


def fit_regnet(observed: Sequence[int] | AnyNetSpec, grid: FitGrid = FitGrid()) -> LinearFit:
  """Grid search for the (w0, wa, wm) whose quantised widths best match `observed` (per-block widths or a spec)."""
  obs = block_widths(observed) if isinstance(observed, AnyNetSpec) else tuple(observed)
  if not obs or min(obs) <= 0:
    raise ValueError(f"need positive per-block widths, got {obs}")
  q = grid.quant
  w0s = _w0_candidates(grid.w0_range, q, grid.coarse_w0)
  was = np.concatenate([[0.0], np.geomspace(*grid.wa_range, grid.coarse_wa)])
  wms = np.linspace(*grid.wm_range, grid.coarse_wm)
  W0, WA, WM = np.meshgrid(w0s, was, wms, indexing="ij")
  errs = fit_errors(obs, W0, WA, WM, q)
  best = _best(errs, W0, WA, WM)
  wm_step = (wms[1] - wms[0]) if len(wms) > 1 else 0.1
  starts = [_at(flat, W0, WA, WM, errs) for flat in np.argsort(errs, axis=None, kind="stable")[: grid.top_k]]
  starts += _analytic_starts(obs, grid)
  for start in starts:  # refine the best few coarse points, then keep zooming in on the best one found
    fit, wa_span, wm_span = start, 2.0, wm_step
    for _ in range(grid.rounds):
      fit = min(fit, _refine(obs, fit, wa_span, wm_span, grid), key=lambda f: f.e_fit)
      wa_span, wm_span = wa_span ** 0.25, wm_span / 4
    best = min(best, fit, key=lambda f: f.e_fit)
  return best


def _refine(obs, center: LinearFit, wa_span: float, wm_span: float, grid: FitGrid) -> LinearFit:
  """Best fit on a local grid: w0 +-2 quanta, wa in [wa/span, wa*span] (or near 0), wm +- wm_span."""
  q = grid.quant
  f0 = np.unique(np.clip(center.w0 + q * np.arange(-2, 3), max(q, grid.w0_range[0]), grid.w0_range[1]))
  if center.wa > 0:
    fa = np.concatenate([[0.0], center.wa * np.geomspace(1 / wa_span, wa_span, grid.fine)])
  else:
    fa = np.concatenate([[0.0], np.geomspace(grid.wa_range[0], grid.wa_range[0] * 10, grid.fine)])
  fm = np.unique(np.clip(center.wm + wm_span * np.linspace(-1, 1, grid.fine), *grid.wm_range))
  F0, FA, FM = np.meshgrid(f0, fa, fm, indexing="ij")
  return _best(fit_errors(obs, F0, FA, FM, q), F0, FA, FM)


def _analytic_starts(obs, grid: FitGrid) -> list[LinearFit]:
  """A start read off the widths: w0 = first width, wm = mean stage-to-stage ratio, and the wa that puts the
  first stage boundary where it is (k_j turns 1 where u_j / w0 passes sqrt(wm))."""
  changes = [j for j in range(1, len(obs)) if obs[j] != obs[j - 1]]
  w0 = float(np.clip(round(obs[0] / grid.quant) * grid.quant, max(grid.quant, grid.w0_range[0]), grid.w0_range[1]))
  if not changes:
    return [LinearFit(int(w0), 0.0, grid.wm_range[0], float("inf"))]
  ratio = (obs[-1] / obs[0]) ** (1 / len(changes)) if obs[-1] > obs[0] else grid.wm_range[0]
  wm = float(np.clip(ratio, *grid.wm_range))
  wa = float(np.clip(w0 * (np.sqrt(wm) - 1) / changes[0], *grid.wa_range))
  return [LinearFit(int(w0), wa, wm, float("inf"))]


def _at(flat, W0, WA, WM, errs) -> LinearFit:
  return LinearFit(int(W0.flat[flat]), float(WA.flat[flat]), float(WM.flat[flat]), float(errs.flat[flat]))


def _w0_candidates(w0_range, q, count):
  lo, hi = max(q, w0_range[0]), w0_range[1]
  all_w0 = np.arange(lo, hi + 1, q, dtype=np.float64)
  if len(all_w0) <= count:
    return all_w0
  return np.unique(np.round(np.geomspace(lo, hi, count) / q) * q)


def _best(errs, W0, WA, WM) -> LinearFit:
  i = int(np.argmin(errs))
  return LinearFit(int(W0.flat[i]), float(WA.flat[i]), float(WM.flat[i]), float(errs.flat[i]))
