"""Analytic complexity: hand-computed small cases for every layer kind."""

from regnet_jax.complexity import Complexity, complexity
from regnet_jax.specs import AnyNetSpec, StageSpec


def test_conv_counts():
  cx = Complexity(8, 8).conv(4, 6, 3, stride=2, groups=2)
  # out 4x4; flops 9*4*6*16/2; params 9*4*6/2; acts 6*16.
  assert (cx.h, cx.w, cx.flops, cx.params, cx.acts) == (4, 4, 1728, 108, 96)
  cx = Complexity(7, 7).conv(4, 6, 1, stride=2, bias=True)
  assert (cx.h, cx.flops, cx.params, cx.acts) == (4, 4 * 6 * 16 + 6 * 16, 24 + 6, 96)


def test_stem_types():
  spec = dict(stages=(StageSpec(depth=1, width=8, group_w=8),), stem_w=4)
  simple = complexity(AnyNetSpec(**spec, stem_type="simple"), image_size=8, channels=1, num_classes=2)
  res = complexity(AnyNetSpec(**spec, stem_type="res"), image_size=8, channels=1, num_classes=2)
  cifar = complexity(AnyNetSpec(**spec, stem_type="cifar"), image_size=8, channels=1, num_classes=2)
  head = 8 * 2 + 2
  # simple: 3x3 s2 -> 4x4x4: flops 9*1*4*16 = 576, params 36 + 8 (BN), acts 64.
  # block (w_in 4 -> 8, stride 2 at 4x4 -> 2x2, group_w 8 -> groups 1):
  #   proj 1x1: flops 4*8*4=128, params 32+16, acts 32; a 1x1 at 4x4: flops 4*8*16=512, params 32+16, acts 128;
  #   b 3x3 s2: flops 9*8*8*4=2304, params 576+16, acts 32; c 1x1: flops 8*8*4=256, params 64+16, acts 32.
  block = (128 + 512 + 2304 + 256, 48 + 48 + 592 + 80, 32 + 128 + 32 + 32)
  assert (simple.flops, simple.params, simple.acts) == (576 + block[0] + head, 44 + block[1] + head,
                                                        64 + block[2] + 2)
  # res: 7x7 s2 -> 4x4, pool s2 -> 2x2 (acts 16); the block then runs at 2x2 -> 1x1.
  assert res.acts - res.flops != simple.acts - simple.flops
  assert res.params == 49 * 4 + 8 + block[1] + head
  # cifar: 3x3 s1 at 8x8: flops 9*4*64.
  assert cifar.params == simple.params and cifar.flops > simple.flops


def test_se_uses_block_input_width():
  base = dict(stages=(StageSpec(depth=1, width=16, group_w=4),), stem_w=8)
  x = complexity(AnyNetSpec(**base), image_size=16)
  y = complexity(AnyNetSpec(**base, se_ratio=0.25), image_size=16)
  w_se = round(8 * 0.25)  # block input width 8, not the bottleneck width 16
  se_params = 16 * w_se + w_se + w_se * 16 + 16
  assert y.params - x.params == se_params
  assert y.flops - x.flops == se_params  # SE runs at 1x1
  assert y.acts - x.acts == w_se + 16


def test_vanilla_and_basic_blocks():
  st = (StageSpec(depth=2, width=8),)
  vanilla = complexity(AnyNetSpec(stages=st, stem_w=8, block_type="vanilla"), image_size=8, num_classes=1)
  basic = complexity(AnyNetSpec(stages=st, stem_w=8, block_type="basic"), image_size=8, num_classes=1)
  # basic = vanilla + one 1x1 s2 projection (8->8 at 2x2 output) with BN.
  assert basic.params - vanilla.params == 64 + 16
  assert basic.flops - vanilla.flops == 64 * 4
  assert basic.acts - vanilla.acts == 8 * 4


def test_head_width():
  spec = AnyNetSpec(stages=(StageSpec(depth=1, width=8, group_w=8),), head_w=16)
  no_head = spec.replace(head_w=0)
  d = complexity(spec, image_size=32)
  n = complexity(no_head, image_size=32)
  # 1x1 conv 8->16 at 1x1 (32 -> 16 stem -> 8 stage) ... at 8x8: flops 8*16*64, params 128 + 32 BN.
  assert d.params - n.params == 128 + 32 + (16 - 8) * 1000
