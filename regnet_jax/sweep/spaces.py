"""Design spaces as data: AnyNetX_A..E, RegNet (paper sections 3.1-3.3), the d2l exercises, custom spaces.

A space is a frozen dataclass holding its ranges and restrictions. `draw(rng)` returns one candidate (or None when
the draw breaks a restriction and must be rejected); `violations(candidate)` lists every restriction a candidate
breaks, so tests and callers can check any model against any space. Complexity bounds are not part of a space:
they belong to the sweep's regime (`sampling.Regime`).

Sampling follows the paper ("log-uniform sampling of d_i <= 16, w_i <= 1024 and divisible by 8, b_i in {1, 2, 4}
and g_i in {1, 2, ..., 32}") and pycls's `regnet_sampler` for RegNet (d uniform, w0/wa/wm log-uniform quantised
to 8 / 0.1 / 0.001; b, g "as before"). Ordered spaces (D, E, VioNet) sort their independent draws, which has the
same distribution as rejecting unordered draws. Group widths are made compatible with the bottleneck width as pycls
does (`regnet.adjust_block_compatibility`), which can clip g to the bottleneck width of a narrow stage.

The d2l exercises (RegNet chapter): VioNet_d / _w / _g / _b each break exactly one principle of AnyNetX_E (depths
or widths shrink from stage to stage, group widths or bottleneck ratios differ between stages), so a sweep of the
four next to AnyNetX_E measures which principle matters most; VioNet breaks both orderings. AnyNet_E_basic and
RegNet_basic "de-ResNeXt-ify" AnyNetX_E and RegNet: basic residual blocks (two full 3x3 convs) instead of X blocks,
so b and g do not exist (both fixed to 1).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from regnet_jax.regnet import adjust_block_compatibility, generate_regnet, regnet_to_anynet
from regnet_jax.specs import BLOCK_TYPES, AnyNetSpec, RegNetSpec, StageSpec
from regnet_jax.sweep import rand

ORDERS = ("any", "nondecreasing", "decreasing")
PAPER_BOTTLENECK_RATIOS = (1, 2, 4)
PAPER_GROUP_WIDTHS = (1, 2, 4, 8, 16, 32)


class SpaceError(ValueError):
  """A design space definition holds a value outside its allowed range."""


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One drawn model: the AnyNet to train and, for RegNet spaces, the parameters that generated it."""

  spec: AnyNetSpec
  regnet: RegNetSpec | None = None


@dataclasses.dataclass(frozen=True)
class AnyNetSpace:
  """`num_stages` stages of X blocks (residual bottleneck with group conv); per-stage d_i, w_i, b_i, g_i.

  `bottleneck_ratios` are b (bot_mul = 1/b). `shared_*` ties a parameter across stages (spaces B, C); `vary_*`
  is its opposite, at least two stages differ (VioNet_b, VioNet_g); `width_order` / `depth_order` restrict the
  stage-to-stage order (D, E: 'nondecreasing'; VioNet: 'decreasing', i.e. strictly). `block_type` 'basic' or
  'vanilla' (specs.BLOCK_TYPES) has no bottleneck and no groups: it needs bottleneck_ratios=(1,), group_widths=(1,).
  """

  kind: ClassVar[str] = "anynet"

  name: str
  num_stages: int = 4
  depth_range: tuple[int, int] = (1, 16)
  width_range: tuple[int, int] = (8, 1024)
  width_quant: int = 8
  bottleneck_ratios: tuple[int, ...] = PAPER_BOTTLENECK_RATIOS
  group_widths: tuple[int, ...] = PAPER_GROUP_WIDTHS
  shared_bottleneck: bool = False
  shared_group_width: bool = False
  vary_bottleneck: bool = False
  vary_group_width: bool = False
  width_order: str = "any"
  depth_order: str = "any"
  stride: int = 2
  stem_type: str = "simple"
  stem_w: int = 32
  se_ratio: float = 0.0
  block_type: str = "bottleneck"
  description: str = ""

  def __post_init__(self):
    _normalise_tuples(self)
    _check_block_type(self)
    _check_range(self, "depth_range", self.depth_range, 1)
    _check_range(self, "width_range", self.width_range, self.width_quant)
    if self.width_range[0] % self.width_quant or self.width_range[1] % self.width_quant:
      raise SpaceError(f"{self.name}: width_range={self.width_range} must be multiples of "
                       f"width_quant={self.width_quant}")
    if self.num_stages < 1:
      raise SpaceError(f"{self.name}: num_stages={self.num_stages} must be >= 1")
    _check_positive_values(self, "bottleneck_ratios", self.bottleneck_ratios)
    _check_positive_values(self, "group_widths", self.group_widths)
    for field in ("width_order", "depth_order"):
      if getattr(self, field) not in ORDERS:
        raise SpaceError(f"{self.name}: {field}={getattr(self, field)!r} must be one of {ORDERS}")
    for what, values in (("bottleneck", self.bottleneck_ratios), ("group_width", self.group_widths)):
      if getattr(self, f"vary_{what}") and (getattr(self, f"shared_{what}") or len(values) < 2):
        raise SpaceError(f"{self.name}: vary_{what}=True needs shared_{what}=False and at least two values to "
                         f"vary between (got {values}); drop one of the two settings")

  def draw(self, rng: np.random.Generator) -> Candidate | None:
    n = self.num_stages
    depths = [rand.log_uniform(rng, *self.depth_range, 1) for _ in range(n)]
    widths = [rand.log_uniform(rng, *self.width_range, self.width_quant) for _ in range(n)]
    bs = _draw_per_stage(rng, self.bottleneck_ratios, n, self.shared_bottleneck)
    gs = _draw_per_stage(rng, self.group_widths, n, self.shared_group_width)
    depths, widths = _order(depths, self.depth_order), _order(widths, self.width_order)
    bot_muls = [1.0 / b for b in bs]
    widths, bot_muls, gs = adjust_block_compatibility(widths, bot_muls, gs)
    stages = tuple(StageSpec(depth=d, width=w, stride=self.stride, bot_mul=b, group_w=g)
                   for d, w, b, g in zip(depths, widths, bot_muls, gs))
    candidate = Candidate(AnyNetSpec(stages=stages, stem_type=self.stem_type, stem_w=self.stem_w,
                                     block_type=self.block_type, se_ratio=self.se_ratio))
    return None if self.violations(candidate) else candidate

  def violations(self, candidate: Candidate) -> list[str]:
    """Every restriction of this space that `candidate` breaks (empty when it belongs to the space)."""
    spec, out = candidate.spec, []
    if len(spec.stages) != self.num_stages:
      return [f"{len(spec.stages)} stages, space has {self.num_stages}"]
    lo_d, hi_d = self.depth_range
    lo_w, hi_w = self.width_range
    allowed_bot_muls = {1.0 / b for b in self.bottleneck_ratios}
    for i, s in enumerate(spec.stages):
      if not lo_d <= s.depth <= hi_d:
        out.append(f"stage {i} depth {s.depth} outside {self.depth_range}")
      if not lo_w <= s.width <= hi_w or s.width % self.width_quant:
        out.append(f"stage {i} width {s.width} outside {self.width_range} or not a multiple of {self.width_quant}")
      if s.bot_mul not in allowed_bot_muls:
        out.append(f"stage {i} bot_mul {s.bot_mul} not 1/b for b in {self.bottleneck_ratios}")
      if s.group_w not in self.group_widths and not (s.group_w == s.bottleneck_width
                                                     and s.group_w < max(self.group_widths)):
        out.append(f"stage {i} group width {s.group_w} not in {self.group_widths} (nor clipped to the "
                   f"bottleneck width {s.bottleneck_width})")
      if s.stride != self.stride:
        out.append(f"stage {i} stride {s.stride} != {self.stride}")
    if self.shared_bottleneck and len(set(spec.bot_muls)) > 1:
      out.append(f"bottleneck ratios {spec.bot_muls} not shared")
    if self.shared_group_width and len(set(spec.group_ws)) > 1:
      out.append(f"group widths {spec.group_ws} not shared")
    if self.vary_bottleneck and len(set(spec.bot_muls)) == 1:
      out.append(f"bottleneck ratios {spec.bot_muls} do not vary between stages")
    if self.vary_group_width and len(set(spec.group_ws)) == 1:
      out.append(f"group widths {spec.group_ws} do not vary between stages")
    out += _order_violations("widths", spec.widths, self.width_order)
    out += _order_violations("depths", spec.depths, self.depth_order)
    if (spec.stem_type, spec.stem_w, spec.block_type, spec.se_ratio) != (
        self.stem_type, self.stem_w, self.block_type, self.se_ratio):
      out.append("stem, block type or se_ratio differ from the space's")
    return out


@dataclasses.dataclass(frozen=True)
class RegNetSpace:
  """The RegNet space (paper sec. 3.3): six parameters d, w0, wa, wm, b, g generate the per-block widths.

  pycls's sweep constraint `num_stages_range` keeps models whose generated stage count lies in the range and that
  skip no quantisation level (num_stages == total_stages); the paper's spaces have 4 stages.
  """

  kind: ClassVar[str] = "regnet"

  name: str
  depth_range: tuple[int, int] = (1, 63)
  w0_range: tuple[int, int] = (8, 248)
  wa_range: tuple[float, float] = (0.1, 255.9)
  wm_range: tuple[float, float] = (1.5, 3.0)
  bottleneck_ratios: tuple[int, ...] = PAPER_BOTTLENECK_RATIOS
  group_widths: tuple[int, ...] = PAPER_GROUP_WIDTHS
  num_stages_range: tuple[int, int] = (4, 4)
  quant: int = 8
  stride: int = 2
  stem_type: str = "simple"
  stem_w: int = 32
  se_ratio: float = 0.0
  block_type: str = "bottleneck"
  description: str = ""

  W0_QUANT: ClassVar[int] = 8
  WA_QUANT: ClassVar[float] = 0.1
  WM_QUANT: ClassVar[float] = 0.001

  def __post_init__(self):
    _normalise_tuples(self)
    _check_block_type(self)
    _check_range(self, "depth_range", self.depth_range, 1)
    _check_range(self, "w0_range", self.w0_range, self.W0_QUANT)
    _check_range(self, "wa_range", self.wa_range, self.WA_QUANT)
    _check_range(self, "wm_range", self.wm_range, 1 + self.WM_QUANT)
    _check_range(self, "num_stages_range", self.num_stages_range, 1)
    if self.w0_range[0] % self.W0_QUANT or self.w0_range[1] % self.W0_QUANT:
      raise SpaceError(f"{self.name}: w0_range={self.w0_range} must be multiples of {self.W0_QUANT}")
    _check_positive_values(self, "bottleneck_ratios", self.bottleneck_ratios)
    _check_positive_values(self, "group_widths", self.group_widths)

  def draw(self, rng: np.random.Generator) -> Candidate | None:
    params = RegNetSpec(
        depth=rand.uniform(rng, *self.depth_range, 1),
        w0=rand.log_uniform(rng, *self.w0_range, self.W0_QUANT),
        wa=rand.log_uniform(rng, *self.wa_range, self.WA_QUANT),
        wm=rand.log_uniform(rng, *self.wm_range, self.WM_QUANT),
        bot_mul=1.0 / rand.choice(rng, self.bottleneck_ratios),
        group_w=rand.choice(rng, self.group_widths),
        se_ratio=self.se_ratio, stride=self.stride, stem_type=self.stem_type, stem_w=self.stem_w,
        block_type=self.block_type, quant=self.quant)
    if not self._stages_ok(params):
      return None
    return Candidate(regnet_to_anynet(params), params)

  def _stages_ok(self, p: RegNetSpec) -> bool:
    gen = generate_regnet(p.wa, p.w0, p.wm, p.depth, p.quant)
    lo, hi = self.num_stages_range
    return gen.num_stages == gen.total_stages and lo <= gen.num_stages <= hi

  def violations(self, candidate: Candidate) -> list[str]:
    p, out = candidate.regnet, []
    if p is None:
      return ["not a RegNet sample (no generating parameters)"]
    for field in ("depth", "w0", "wa", "wm"):
      lo, hi = getattr(self, f"{field}_range")
      if not lo <= getattr(p, field) <= hi:
        out.append(f"{field}={getattr(p, field)} outside {(lo, hi)}")
    if p.bot_mul not in {1.0 / b for b in self.bottleneck_ratios}:
      out.append(f"bot_mul={p.bot_mul} not 1/b for b in {self.bottleneck_ratios}")
    if p.group_w not in self.group_widths:
      out.append(f"group_w={p.group_w} not in {self.group_widths}")
    if p.block_type != self.block_type:
      out.append(f"block_type={p.block_type!r}, space has {self.block_type!r}")
    if not self._stages_ok(p):
      out.append(f"stage count outside {self.num_stages_range} or a skipped quantisation level")
    if regnet_to_anynet(p) != candidate.spec:
      out.append("spec is not the AnyNet its RegNet parameters generate")
    return out


def _draw_per_stage(rng, values, n, shared):
  if shared:
    return [rand.choice(rng, values)] * n
  return [rand.choice(rng, values) for _ in range(n)]


def _order(values, order):
  if order == "nondecreasing":
    return sorted(values)
  if order == "decreasing":
    return sorted(values, reverse=True)
  return values


def _order_violations(what, values, order):
  pairs = list(zip(values, values[1:]))
  if order == "nondecreasing" and any(b < a for a, b in pairs):
    return [f"{what} {values} not non-decreasing"]
  if order == "decreasing" and any(b >= a for a, b in pairs):
    return [f"{what} {values} not strictly decreasing"]
  return []


def _normalise_tuples(space):
  for f in dataclasses.fields(space):
    value = getattr(space, f.name)
    if isinstance(value, list):
      object.__setattr__(space, f.name, tuple(value))


def _check_range(space, field, value, minimum):
  ok = isinstance(value, tuple) and len(value) == 2 and minimum <= value[0] <= value[1]
  if not ok:
    raise SpaceError(f"{space.name}: {field}={value!r} must be a (low, high) pair with {minimum} <= low <= high")


def _check_block_type(space):
  if space.block_type not in BLOCK_TYPES:
    raise SpaceError(f"{space.name}: block_type={space.block_type!r} must be one of {BLOCK_TYPES}")
  if space.block_type != "bottleneck" and (tuple(space.bottleneck_ratios) != (1,)
                                            or tuple(space.group_widths) != (1,) or space.se_ratio):
    # Basic and vanilla blocks ignore b and g: sampling them would train identical models under distinct specs.
    raise SpaceError(f"{space.name}: block_type={space.block_type!r} has no bottleneck, groups or SE; set "
                     f"bottleneck_ratios=(1,), group_widths=(1,) and se_ratio=0 (got {space.bottleneck_ratios}, "
                     f"{space.group_widths}, {space.se_ratio})")


def _check_positive_values(space, field, values):
  if not values or not all(isinstance(v, (int, float)) and v > 0 for v in values):
    raise SpaceError(f"{space.name}: {field}={values!r} must be a non-empty tuple of positive numbers")


Space = AnyNetSpace | RegNetSpace

_PAPER = "Radosavovic et al. 2020, sec. 3"
_E = dict(shared_bottleneck=True, shared_group_width=True, width_order="nondecreasing", depth_order="nondecreasing")
_NO_BOTTLENECK = dict(block_type="basic", bottleneck_ratios=(1,), group_widths=(1,))
SPACES: Mapping[str, Space] = {s.name: s for s in (
    AnyNetSpace("AnyNetX_A", description=f"{_PAPER}.1: 16 free parameters"),
    AnyNetSpace("AnyNetX_B", shared_bottleneck=True, description="A + shared bottleneck ratio"),
    AnyNetSpace("AnyNetX_C", shared_bottleneck=True, shared_group_width=True,
                description="B + shared group width"),
    AnyNetSpace("AnyNetX_D", shared_bottleneck=True, shared_group_width=True, width_order="nondecreasing",
                description="C + w_{i+1} >= w_i"),
    AnyNetSpace("AnyNetX_E", shared_bottleneck=True, shared_group_width=True, width_order="nondecreasing",
                depth_order="nondecreasing", description="D + d_{i+1} >= d_i"),
    RegNetSpace("RegNet", description=f"{_PAPER}.3: d < 64, w0, wa < 256, 1.5 <= wm <= 3, b, g as AnyNetX"),
    RegNetSpace("RegNetX", depth_range=(12, 28), wm_range=(2.0, 3.0), bottleneck_ratios=(1,),
                description="paper sec. 4 refinement: b = 1, 12 <= d <= 28, wm >= 2"),
    AnyNetSpace("VioNet", shared_bottleneck=True, shared_group_width=True, width_order="decreasing",
                depth_order="decreasing",
                description="d2l exercise: violates the principles, widths and depths shrink stage to stage"),
    AnyNetSpace("VioNet_d", **dict(_E, depth_order="decreasing"),
                description="AnyNetX_E but depths strictly decrease (d2l exercise: breaks d_{i+1} >= d_i only)"),
    AnyNetSpace("VioNet_w", **dict(_E, width_order="decreasing"),
                description="AnyNetX_E but widths strictly decrease (d2l exercise: breaks w_{i+1} >= w_i only)"),
    AnyNetSpace("VioNet_g", **dict(_E, shared_group_width=False, vary_group_width=True),
                description="AnyNetX_E but group widths differ between stages (d2l exercise: breaks shared g only)"),
    AnyNetSpace("VioNet_b", **dict(_E, shared_bottleneck=False, vary_bottleneck=True),
                description="AnyNetX_E but bottleneck ratios differ between stages (breaks shared b only)"),
    AnyNetSpace("AnyNet_E_basic", **_E, **_NO_BOTTLENECK,
                description="AnyNetX_E with basic residual blocks instead of X blocks (d2l: de-ResNeXt-ify)"),
    RegNetSpace("RegNet_basic", **_NO_BOTTLENECK,
                description="RegNet with basic residual blocks instead of X blocks (d2l: de-ResNeXt-ify)"),
)}


def space_names() -> tuple[str, ...]:
  return tuple(SPACES)


def get_space(name: str) -> Space:
  """A registered space by name (case-insensitive); an unknown name raises SpaceError with the closest names."""
  by_lower = {k.lower(): v for k, v in SPACES.items()}
  if isinstance(name, str) and name.lower() in by_lower:
    return by_lower[name.lower()]
  close = difflib.get_close_matches(str(name), list(SPACES), n=3, cutoff=0.4)
  hint = f"closest: {', '.join(close)}; " if close else ""
  raise SpaceError(f"unknown design space {name!r}; {hint}known: {', '.join(SPACES)}")


def space_from_dict(name: str, fields: Mapping[str, Any]) -> Space:
  """A custom space from a config entry.

  `{"base": "AnyNetX_E", "width_range": (8, 256)}` copies a registered space and replaces fields;
  `{"kind": "anynet" | "regnet", ...}` builds one from scratch. A bare `{}` (or `{"n": ...}` only, as sweep configs
  write) is the registered space of that name. Keys that are not space fields raise SpaceError listing the valid ones.
  """
  fields = {k: v for k, v in dict(fields).items() if k != "n"}
  base_name, kind = fields.pop("base", None), fields.pop("kind", None)
  if base_name is None and kind is None:
    base = get_space(name)
  elif base_name is not None:
    base = get_space(base_name)
  elif kind in ("anynet", "regnet"):
    base = (AnyNetSpace if kind == "anynet" else RegNetSpace)(name)
  else:
    raise SpaceError(f"space {name!r}: kind={kind!r} must be 'anynet' or 'regnet' (or give base=<space name>)")
  valid = {f.name for f in dataclasses.fields(base)} - {"name"}
  unknown = sorted(set(fields) - valid)
  if unknown:
    raise SpaceError(f"space {name!r}: unknown field(s) {unknown}; valid fields of {type(base).__name__}: "
                     f"{sorted(valid)}")
  return dataclasses.replace(base, name=name, **fields)
