"""Analytic complexity (pycls conventions): flops as multiply-adds, parameters, activations.

No tracing: computed from the spec alone, layer by layer in the same order and with the same integer arithmetic as
pycls's `complexity` methods, so the numbers match its model zoo exactly.
"""

from __future__ import annotations

import dataclasses

from regnet_jax.specs import AnyNetSpec


@dataclasses.dataclass(frozen=True)
class Complexity:
  h: int
  w: int
  flops: int = 0
  params: int = 0
  acts: int = 0

  def conv(self, w_in, w_out, k, *, stride=1, groups=1, bias=False) -> "Complexity":
    h, w = (self.h - 1) // stride + 1, (self.w - 1) // stride + 1
    return Complexity(
        h, w,
        self.flops + k * k * w_in * w_out * h * w // groups + (w_out * h * w if bias else 0),
        self.params + k * k * w_in * w_out // groups + (w_out if bias else 0),
        self.acts + w_out * h * w)

  def norm(self, c) -> "Complexity":
    return dataclasses.replace(self, params=self.params + 2 * c)

  def pool(self, c, k, *, stride=1) -> "Complexity":
    del k
    h, w = (self.h - 1) // stride + 1, (self.w - 1) // stride + 1
    return Complexity(h, w, self.flops, self.params, self.acts + c * h * w)

  def global_pool(self) -> "Complexity":
    return dataclasses.replace(self, h=1, w=1)

  def linear(self, w_in, w_out, *, bias=True) -> "Complexity":
    extra = w_out if bias else 0
    return Complexity(self.h, self.w, self.flops + w_in * w_out + extra, self.params + w_in * w_out + extra,
                      self.acts + w_out)

  def at(self, h, w) -> "Complexity":
    return dataclasses.replace(self, h=h, w=w)


def _stem(cx: Complexity, stem_type: str, w_in: int, w_out: int) -> Complexity:
  if stem_type == "simple":
    return cx.conv(w_in, w_out, 3, stride=2).norm(w_out)
  if stem_type == "res":
    return cx.conv(w_in, w_out, 7, stride=2).norm(w_out).pool(w_out, 3, stride=2)
  return cx.conv(w_in, w_out, 3).norm(w_out)  # cifar


def _block(cx: Complexity, spec: AnyNetSpec, w_in: int, w_out: int, stride: int, bot_mul: float,
           group_w: int) -> Complexity:
  if spec.block_type == "vanilla":
    return cx.conv(w_in, w_out, 3, stride=stride).norm(w_out).conv(w_out, w_out, 3).norm(w_out)
  if w_in != w_out or stride != 1:
    cx = cx.conv(w_in, w_out, 1, stride=stride).norm(w_out).at(cx.h, cx.w)
  if spec.block_type == "basic":
    return cx.conv(w_in, w_out, 3, stride=stride).norm(w_out).conv(w_out, w_out, 3).norm(w_out)
  w_b = int(round(w_out * bot_mul))
  w_se = int(round(w_in * spec.se_ratio))
  cx = cx.conv(w_in, w_b, 1).norm(w_b)
  cx = cx.conv(w_b, w_b, 3, stride=stride, groups=w_b // group_w).norm(w_b)
  if w_se:
    h, w = cx.h, cx.w
    cx = cx.global_pool().conv(w_b, w_se, 1, bias=True).conv(w_se, w_b, 1, bias=True).at(h, w)
  return cx.conv(w_b, w_out, 1).norm(w_out)


def complexity(spec: AnyNetSpec, *, image_size: int = 224, channels: int = 3, num_classes: int = 1000) -> Complexity:
  """Complexity of the whole network for a square `image_size` input with `channels` channels."""
  cx = _stem(Complexity(image_size, image_size), spec.stem_type, channels, spec.stem_w)
  w_in = spec.stem_w
  for stage in spec.stages:
    for i in range(stage.depth):
      stride = stage.stride if i == 0 else 1
      cx = _block(cx, spec, w_in, stage.width, stride, stage.bot_mul, stage.group_w)
      w_in = stage.width
  if spec.head_w > 0:
    cx = cx.conv(w_in, spec.head_w, 1).norm(spec.head_w)
    w_in = spec.head_w
  return cx.global_pool().linear(w_in, num_classes)
