"""Frozen, validated architecture specs: AnyNet (the general network) and RegNet (its parametrisation).

Field names follow pycls (depth, w0, wa, wm, group_w, bot_mul, se_ratio, stem_w, stem_type, block_type) so a
reader can put our specs next to pycls's yaml files. Every spec validates itself when built: a bad value raises
`SpecError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

STEM_TYPES = ("simple", "res", "cifar")
BLOCK_TYPES = ("vanilla", "basic", "bottleneck")
ROUNDINGS = ("pycls", "torchvision")


class SpecError(ValueError):
  """A spec field holds a value outside its allowed range."""


def _fail(cls_name: str, field: str, value: Any, allowed: str) -> None:
  raise SpecError(f"{cls_name}.{field}={value!r} is invalid: {allowed}")


def _check_int(cls_name, field, value, lo=None, hi=None):
  if isinstance(value, bool) or not isinstance(value, int):
    _fail(cls_name, field, value, f"must be an int{_range(lo, hi)}")
  if (lo is not None and value < lo) or (hi is not None and value > hi):
    _fail(cls_name, field, value, f"must be an int{_range(lo, hi)}")


def _check_float(cls_name, field, value, lo=None, hi=None, lo_open=False):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    _fail(cls_name, field, value, f"must be a finite number{_range(lo, hi, lo_open)}")
  below = lo is not None and (value <= lo if lo_open else value < lo)
  if below or (hi is not None and value > hi):
    _fail(cls_name, field, value, f"must be a number{_range(lo, hi, lo_open)}")


def _range(lo, hi, lo_open=False):
  if lo is None and hi is None:
    return ""
  if hi is None:
    return f" {'>' if lo_open else '>='} {lo}"
  if lo is None:
    return f" <= {hi}"
  return f" in {'(' if lo_open else '['}{lo}, {hi}]"


def _check_choice(cls_name, field, value, choices):
  if value not in choices:
    _fail(cls_name, field, value, f"must be one of {', '.join(map(repr, choices))}")


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage: `depth` blocks of output width `width`; the first block has stride `stride`."""

  depth: int
  width: int
  stride: int = 2
  bot_mul: float = 1.0
  group_w: int = 1

  def __post_init__(self):
    name = type(self).__name__
    _check_int(name, "depth", self.depth, 1)
    _check_int(name, "width", self.width, 1)
    _check_int(name, "stride", self.stride, 1, 2)
    _check_float(name, "bot_mul", self.bot_mul, 0, lo_open=True)
    _check_int(name, "group_w", self.group_w, 1)

  @property
  def bottleneck_width(self) -> int:
    # pycls: w_b = int(round(w_out * bot_mul)), Python's half-to-even round.
    return int(round(self.width * self.bot_mul))

  @property
  def groups(self) -> int:
    return self.bottleneck_width // self.group_w


@dataclasses.dataclass(frozen=True)
class AnyNetSpec:
  """stem -> stages -> head, exactly pycls's AnyNet parameters.

  `se_ratio` 0 means no squeeze-excitation (X blocks); pycls's Y models use 0.25. `head_w` 0 means the head is
  global pooling + dense, as in every RegNet; > 0 adds pycls's 1x1 conv + BN + ReLU before pooling.
  """

  stages: tuple[StageSpec, ...]
  stem_type: str = "simple"
  stem_w: int = 32
  block_type: str = "bottleneck"
  se_ratio: float = 0.0
  head_w: int = 0

  def __post_init__(self):
    name = type(self).__name__
    if isinstance(self.stages, list):
      object.__setattr__(self, "stages", tuple(self.stages))
    if not isinstance(self.stages, tuple) or not self.stages:
      _fail(name, "stages", self.stages, "must be a non-empty tuple of StageSpec")
    for i, stage in enumerate(self.stages):
      if not isinstance(stage, StageSpec):
        _fail(name, f"stages[{i}]", stage, "must be a StageSpec")
    _check_choice(name, "stem_type", self.stem_type, STEM_TYPES)
    _check_int(name, "stem_w", self.stem_w, 1)
    _check_choice(name, "block_type", self.block_type, BLOCK_TYPES)
    _check_float(name, "se_ratio", self.se_ratio, 0, 1)
    _check_int(name, "head_w", self.head_w, 0)
    if self.se_ratio > 0 and self.block_type != "bottleneck":
      _fail(name, "se_ratio", self.se_ratio, f"squeeze-excitation needs block_type='bottleneck', got "
            f"{self.block_type!r}; set se_ratio=0")
    if self.block_type == "bottleneck":
      for i, s in enumerate(self.stages):
        w_b = s.bottleneck_width
        if w_b < 1:
          _fail(name, f"stages[{i}].bot_mul", s.bot_mul, f"gives bottleneck width {w_b} for width {s.width}")
        if w_b % s.group_w:
          _fail(name, f"stages[{i}].group_w", s.group_w,
                f"must divide the bottleneck width round(width*bot_mul)={w_b}; "
                "use regnet.adjust_block_compatibility to make widths and groups compatible")

  @classmethod
  def from_lists(cls, *, depths, widths, strides=None, bot_muls=None, group_ws=None, **kwargs) -> "AnyNetSpec":
    """pycls's per-stage list form (DEPTHS, WIDTHS, STRIDES, BOT_MULS, GROUP_WS)."""
    n = len(depths)
    strides = [2] * n if strides is None else strides
    bot_muls = [1.0] * n if bot_muls is None else bot_muls
    group_ws = [1] * n if group_ws is None else group_ws
    lens = {"depths": n, "widths": len(widths), "strides": len(strides), "bot_muls": len(bot_muls),
            "group_ws": len(group_ws)}
    if len(set(lens.values())) != 1:
      raise SpecError(f"AnyNetSpec per-stage lists must have equal lengths, got {lens}")
    stages = tuple(StageSpec(depth=d, width=w, stride=s, bot_mul=b, group_w=g)
                   for d, w, s, b, g in zip(depths, widths, strides, bot_muls, group_ws))
    return cls(stages=stages, **kwargs)

  @property
  def depths(self) -> tuple[int, ...]:
    return tuple(s.depth for s in self.stages)

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(s.width for s in self.stages)

  @property
  def strides(self) -> tuple[int, ...]:
    return tuple(s.stride for s in self.stages)

  @property
  def bot_muls(self) -> tuple[float, ...]:
    return tuple(s.bot_mul for s in self.stages)

  @property
  def group_ws(self) -> tuple[int, ...]:
    return tuple(s.group_w for s in self.stages)

  def replace(self, **changes) -> "AnyNetSpec":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RegNetSpec:
  """The RegNet design space's six parameters plus the fixed choices (paper section 4; pycls cfg.REGNET).

  `rounding` picks how widths and group widths are made compatible: 'pycls' (the reference) or
  'torchvision' (its `_make_divisible`, which changes regnet_x_400mf, regnet_y_800mf and regnet_y_8gf).
  """

  depth: int
  w0: int
  wa: float
  wm: float
  group_w: int
  bot_mul: float = 1.0
  se_ratio: float = 0.0
  stride: int = 2
  stem_type: str = "simple"
  stem_w: int = 32
  block_type: str = "bottleneck"
  head_w: int = 0
  quant: int = 8
  rounding: str = "pycls"

  def __post_init__(self):
    name = type(self).__name__
    _check_int(name, "depth", self.depth, 1)
    _check_int(name, "quant", self.quant, 1)
    _check_int(name, "w0", self.w0, 1)
    if self.w0 % self.quant:
      _fail(name, "w0", self.w0, f"must be a positive multiple of quant={self.quant}")
    _check_float(name, "wa", self.wa, 0)
    _check_float(name, "wm", self.wm, 1, lo_open=True)
    _check_int(name, "group_w", self.group_w, 1)
    _check_float(name, "bot_mul", self.bot_mul, 0, lo_open=True)
    _check_float(name, "se_ratio", self.se_ratio, 0, 1)
    _check_int(name, "stride", self.stride, 1, 2)
    _check_choice(name, "stem_type", self.stem_type, STEM_TYPES)
    _check_int(name, "stem_w", self.stem_w, 1)
    _check_choice(name, "block_type", self.block_type, BLOCK_TYPES)
    _check_int(name, "head_w", self.head_w, 0)
    _check_choice(name, "rounding", self.rounding, ROUNDINGS)

  def replace(self, **changes) -> "RegNetSpec":
    return dataclasses.replace(self, **changes)
