"""RegNet parametrisation -> AnyNet spec, exactly as pycls (and optionally torchvision) compute it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from regnet_jax.specs import AnyNetSpec, RegNetSpec, SpecError, StageSpec


@dataclasses.dataclass(frozen=True)
class RegNetWidths:
  """What the generator produces before block compatibility (pycls `generate_regnet`)."""

  widths: tuple[int, ...]  # per stage, sorted
  depths: tuple[int, ...]  # per stage
  num_stages: int
  total_stages: int  # max quantisation index + 1; can exceed num_stages when a level is skipped
  block_widths: tuple[int, ...]  # quantised per-block widths
  block_widths_cont: tuple[float, ...]  # the linear u_j = w0 + wa * j


def generate_regnet(wa: float, w0: int, wm: float, depth: int, quant: int = 8) -> RegNetWidths:
  """Per-stage widths and depths from the linear parametrisation, quantised in log space.

  u_j = w0 + wa*j; k_j = round(log(u_j/w0)/log(wm)); w_j = round(w0*wm^k_j / q)*q. numpy's round is
  half-to-even, as in pycls; keep numpy (not math) so every intermediate is the same float64 as pycls.
  """
  if not (wa >= 0 and w0 > 0 and wm > 1 and w0 % quant == 0):
    raise SpecError(f"RegNet needs wa >= 0, w0 > 0, wm > 1, w0 % {quant} == 0; got wa={wa}, w0={w0}, wm={wm}")
  ws_cont = np.arange(depth) * wa + w0
  ks = np.round(np.log(ws_cont / w0) / np.log(wm))
  ws_all = w0 * np.power(wm, ks)
  ws_all = np.round(np.divide(ws_all, quant)).astype(int) * quant
  ws, ds = np.unique(ws_all, return_counts=True)
  return RegNetWidths(
      widths=tuple(int(w) for w in ws),
      depths=tuple(int(d) for d in ds),
      num_stages=len(ws),
      total_stages=int(ks.max()) + 1,
      block_widths=tuple(int(w) for w in ws_all),
      block_widths_cont=tuple(float(w) for w in ws_cont),
  )


def adjust_block_compatibility(ws, bs, gs) -> tuple[tuple[int, ...], tuple[float, ...], tuple[int, ...]]:
  """pycls: make widths, bottleneck multipliers and group widths compatible (w*b divisible by g).

  The rounding `round(v / m)` is Python's half-to-even; v/m == x.5 does occur in the zoo, so do not replace it
  with floor(x + 0.5).
  """
  if not len(ws) == len(bs) == len(gs):
    raise SpecError(f"widths, bot_muls and group_ws need equal lengths, got {len(ws)}, {len(bs)}, {len(gs)}")
  if not all(w > 0 and b > 0 and g > 0 for w, b, g in zip(ws, bs, gs)):
    raise SpecError(f"widths, bot_muls and group_ws must be positive, got {ws}, {bs}, {gs}")
  vs = [int(max(1, w * b)) for w, b in zip(ws, bs)]
  gs = [int(min(g, v)) for g, v in zip(gs, vs)]
  ms = [_lcm(g, b) if b > 1 else g for g, b in zip(gs, bs)]
  vs = [max(m, int(round(v / m) * m)) for v, m in zip(vs, ms)]
  ws = [int(v / b) for v, b in zip(vs, bs)]
  assert all(w * b % g == 0 for w, b, g in zip(ws, bs, gs)), (ws, bs, gs)
  return tuple(ws), tuple(bs), tuple(gs)


def _lcm(g: int, b: float) -> int:
  if float(b) != int(b):
    raise SpecError(f"a bottleneck multiplier > 1 must be an integer to combine with group width, got {b}")
  return math.lcm(int(g), int(b))


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
  """torchvision's rounding (round half up, then bump by one divisor if it lost more than 10%)."""
  min_value = divisor if min_value is None else min_value
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def adjust_widths_groups_torchvision(ws, bs, gs) -> tuple[tuple[int, ...], tuple[float, ...], tuple[int, ...]]:
  """torchvision `BlockParams._adjust_widths_groups_compatibilty`."""
  w_bots = [int(w * b) for w, b in zip(ws, bs)]
  gs = [min(g, w_bot) for g, w_bot in zip(gs, w_bots)]
  w_bots = [_make_divisible(w_bot, g) for w_bot, g in zip(w_bots, gs)]
  ws = [int(w_bot / b) for w_bot, b in zip(w_bots, bs)]
  return tuple(ws), tuple(bs), tuple(gs)


def regnet_to_anynet(spec: RegNetSpec) -> AnyNetSpec:
  """The single place where a RegNet becomes an AnyNet (pycls `RegNet.get_params`)."""
  gen = generate_regnet(spec.wa, spec.w0, spec.wm, spec.depth, spec.quant)
  n = gen.num_stages
  bs, gs = [spec.bot_mul] * n, [spec.group_w] * n
  adjust = adjust_block_compatibility if spec.rounding == "pycls" else adjust_widths_groups_torchvision
  ws, bs, gs = adjust(list(gen.widths), bs, gs)
  stages = tuple(StageSpec(depth=d, width=w, stride=spec.stride, bot_mul=b, group_w=g)
                 for d, w, b, g in zip(gen.depths, ws, bs, gs))
  return AnyNetSpec(stages=stages, stem_type=spec.stem_type, stem_w=spec.stem_w, block_type=spec.block_type,
                    se_ratio=spec.se_ratio, head_w=spec.head_w)
