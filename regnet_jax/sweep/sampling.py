"""Sample models from a design space inside a complexity regime: deterministic from a seed, no duplicates."""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

from regnet_jax.complexity import Complexity, complexity
from regnet_jax.specs import AnyNetSpec, RegNetSpec
from regnet_jax.sweep.spaces import Space
from regnet_jax.specs_io import regnet_to_dict, spec_to_dict

Bounds = tuple[float, float] | None
DRAWS_PER_SAMPLE = 2000  # rejection budget per requested model (plus a fixed floor) before giving up


class RegimeError(ValueError):
  """Not enough models of a space fall inside the regime."""


@dataclasses.dataclass(frozen=True)
class Regime:
  """Complexity bounds (closed intervals; None = unbounded) at the sweep's input geometry.

  The paper's design-space sweeps use the 400MF regime at 224x224x3, 1000 classes ("flops" = multiply-adds).
  """

  flops: Bounds = None
  params: Bounds = None
  acts: Bounds = None
  image_size: int = 224
  channels: int = 3
  num_classes: int = 1000

  def __post_init__(self):
    for field in ("flops", "params", "acts"):
      b = getattr(self, field)
      if b is not None:
        if len(b) != 2 or not 0 <= b[0] <= b[1]:
          raise ValueError(f"Regime.{field}={b!r} must be a (low, high) pair with 0 <= low <= high, or None")
        object.__setattr__(self, field, (float(b[0]), float(b[1])))

  def measure(self, spec: AnyNetSpec) -> Complexity:
    return complexity(spec, image_size=self.image_size, channels=self.channels, num_classes=self.num_classes)

  def contains(self, cx: Complexity) -> bool:
    return all(b is None or b[0] <= getattr(cx, f) <= b[1]
               for f, b in (("flops", self.flops), ("params", self.params), ("acts", self.acts)))


@dataclasses.dataclass(frozen=True)
class Sample:
  """One sampled model with its complexity at the regime's input geometry."""

  space: str
  spec: AnyNetSpec
  flops: int
  params: int
  acts: int
  regnet: RegNetSpec | None = None

  def to_dict(self) -> dict[str, Any]:
    out: dict[str, Any] = {
        "space": self.space,
        "depths": list(self.spec.depths),
        "widths": list(self.spec.widths),
        "bot_muls": list(self.spec.bot_muls),
        "group_widths": list(self.spec.group_ws),
    }
    if self.regnet is not None:
      out["regnet"] = regnet_to_dict(self.regnet)
    out.update(flops=self.flops, params=self.params, acts=self.acts, spec=spec_to_dict(self.spec))
    return out


def space_rng(space_name: str, seed: int) -> np.random.Generator:
  """Independent stream per (seed, space name): spaces in one sweep do not share draws."""
  return np.random.default_rng([int(seed), zlib.crc32(space_name.encode())])


def sample_space(space: Space, n: int, regime: Regime = Regime(), seed: int = 0,
                 max_draws: int | None = None) -> tuple[Sample, ...]:
  """`n` distinct models of `space` whose complexity lies in `regime`, by rejection sampling.

  Deterministic: the same (space, n, regime, seed) gives the same list, and a larger n extends a smaller n's list.
  Raises RegimeError when `max_draws` draws (default 2000 per model + 10000) yield fewer than n models.
  """
  if n < 0:
    raise ValueError(f"n={n} must be >= 0")
  max_draws = DRAWS_PER_SAMPLE * n + 10_000 if max_draws is None else max_draws
  rng = space_rng(space.name, seed)
  samples, seen = [], set()
  draws = 0
  while len(samples) < n:
    if draws >= max_draws:
      raise RegimeError(
          f"only {len(samples)} of {n} distinct models of space {space.name!r} fell in the regime "
          f"(flops={regime.flops}, params={regime.params}, acts={regime.acts} at {regime.image_size}px, "
          f"{regime.channels} channels) after {draws} draws; widen the bounds or lower n")
    draws += 1
    candidate = space.draw(rng)
    if candidate is None or candidate.spec in seen:
      continue
    cx = regime.measure(candidate.spec)
    if not regime.contains(cx):
      continue
    seen.add(candidate.spec)
    samples.append(Sample(space.name, candidate.spec, cx.flops, cx.params, cx.acts, candidate.regnet))
  return tuple(samples)
