"""Quantised random samplers on the closed interval [low, high] (pycls `sweep/random.py` semantics).

Every function takes an explicit `numpy.random.Generator`, so sampling is a pure function of the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal

import numpy as np


def quantize(f: float, q: float | int, op=math.floor) -> float | int:
  """`f` rounded by `op` to a multiple of `q`, with `q`'s type (Decimal keeps 0.1-steps exact)."""
  value = Decimal(int(op(f / q))) * Decimal(str(q))
  return type(q)(value)


def uniform(rng: np.random.Generator, low, high, q):
  """Uniform on [low, high] quantised to q (samples [low, high + q) and floors, as pycls)."""
  _check_range("uniform", low, high, q)
  return quantize(rng.uniform(low, high + q), q, math.floor)


def log_uniform(rng: np.random.Generator, low, high, q):
  """Log-uniform on [low, high] quantised to q.

  pycls: samples f in (low - q*, high] log-uniformly, q* = min(q, low/2), then ceils to a multiple of q, so
  every quantised value in [low, high] is reachable and the CDF is log-linear.
  """
  _check_range("log_uniform", low, high, q)
  if low <= 0:
    raise ValueError(f"log_uniform needs low > 0, got low={low}")
  f = math.exp(rng.uniform(math.log(low - min(q, low / 2)), math.log(high)))
  return min(max(quantize(f, q, math.ceil), low), high)


def choice(rng: np.random.Generator, values: Sequence):
  """One of `values`, uniformly (log-uniform over {1, 2, 4} is uniform over the set)."""
  if not values:
    raise ValueError("choice needs at least one value")
  return values[int(rng.integers(len(values)))]


def _check_range(name, low, high, q):
  if not q > 0 or low > high:
    raise ValueError(f"{name}(low={low}, high={high}, q={q}) is invalid: need q > 0 and low <= high")
