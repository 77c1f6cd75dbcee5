"""Spec validation: bad values raise SpecError naming the field, the value and the allowed range."""

import pytest

from regnet_jax.regnet import adjust_block_compatibility, generate_regnet
from regnet_jax.specs import AnyNetSpec, RegNetSpec, SpecError, StageSpec


@pytest.mark.parametrize("kwargs, field", [
    (dict(depth=0, width=32), "depth"),
    (dict(depth=1, width=-8), "width"),
    (dict(depth=1, width=32, stride=3), "stride"),
    (dict(depth=1, width=32, bot_mul=0), "bot_mul"),
    (dict(depth=1, width=32, group_w=0), "group_w"),
    (dict(depth=1.5, width=32), "depth"),
    (dict(depth=True, width=32), "depth"),
])
def test_stage_spec_rejects(kwargs, field):
  with pytest.raises(SpecError, match=rf"StageSpec\.{field}="):
    StageSpec(**kwargs)


def test_anynet_spec_rejects_incompatible_group_width():
  with pytest.raises(SpecError, match=r"stages\[0\]\.group_w=24.*divide.*32"):
    AnyNetSpec(stages=(StageSpec(depth=1, width=32, group_w=24),))


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(stem_type="conv"), r"stem_type='conv'.*'simple', 'res', 'cifar'"),
    (dict(block_type="x"), r"block_type='x'.*'vanilla', 'basic', 'bottleneck'"),
    (dict(se_ratio=1.5), r"se_ratio=1.5.*\[0, 1\]"),
    (dict(se_ratio=0.25, block_type="basic"), r"se_ratio.*bottleneck"),
    (dict(stem_w=0), r"stem_w=0"),
    (dict(head_w=-1), r"head_w=-1"),
    (dict(stages=()), r"stages=\(\)"),
])
def test_anynet_spec_rejects(kwargs, pattern):
  base = dict(stages=(StageSpec(depth=1, width=32, group_w=8),))
  with pytest.raises(SpecError, match=pattern):
    AnyNetSpec(**{**base, **kwargs})


def test_from_lists_checks_lengths():
  with pytest.raises(SpecError, match="equal lengths"):
    AnyNetSpec.from_lists(depths=(1, 2), widths=(32,))
  spec = AnyNetSpec.from_lists(depths=(1, 2), widths=(32, 64), group_ws=(8, 16))
  assert spec.depths == (1, 2) and spec.widths == (32, 64) and spec.group_ws == (8, 16)
  assert spec.strides == (2, 2) and spec.bot_muls == (1.0, 1.0)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(w0=20), r"w0=20.*multiple of quant=8"),
    (dict(wm=1.0), r"wm=1.0.*> 1"),
    (dict(wa=-1.0), r"wa=-1.0.*>= 0"),
    (dict(depth=0), r"depth=0"),
    (dict(rounding="timm"), r"rounding='timm'.*'pycls', 'torchvision'"),
    (dict(wa=float("nan")), r"wa=nan.*finite"),
])
def test_regnet_spec_rejects(kwargs, pattern):
  base = dict(depth=13, w0=24, wa=36.44, wm=2.49, group_w=8)
  with pytest.raises(SpecError, match=pattern):
    RegNetSpec(**{**base, **kwargs})


def test_specs_are_frozen_and_hashable():
  spec = RegNetSpec(depth=13, w0=24, wa=36.44, wm=2.49, group_w=8)
  with pytest.raises(Exception):
    spec.depth = 3
  assert hash(spec) == hash(RegNetSpec(depth=13, w0=24, wa=36.44, wm=2.49, group_w=8))


def test_generate_regnet_x200mf():
  gen = generate_regnet(36.44, 24, 2.49, 13)
  assert gen.widths == (24, 56, 152, 368)
  assert gen.depths == (1, 1, 4, 7)
  assert gen.num_stages == 4 and gen.total_stages == 4
  assert gen.block_widths_cont[:3] == (24.0, 60.44, 96.88)


def test_adjust_block_compatibility_half_to_even():
  # v/m = 2.5 -> Python round gives 2 (half-to-even), so 40 with group 16 becomes 32, not 48.
  assert adjust_block_compatibility([40], [1.0], [16]) == ((32,), (1.0,), (16,))
  # group width larger than the width is clamped to it.
  assert adjust_block_compatibility([24], [1.0], [48]) == ((24,), (1.0,), (24,))
  # inverted bottleneck: lcm(g, b) quantisation.
  assert adjust_block_compatibility([50], [2], [8]) == ((48,), (2,), (8,))
  # a quarter bottleneck: w*b must be a multiple of g.
  ws, bs, gs = adjust_block_compatibility([104], [0.25], [4])
  assert (ws[0] * bs[0]) % gs[0] == 0 and ws == (96,)  # 26/4 = 6.5 -> 6
