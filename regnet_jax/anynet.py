"""AnyNet: stem -> stages -> head, built from an AnyNetSpec. RegNets are AnyNets whose spec `regnet.py` generated.

`scan_blocks=True` runs the identical blocks 2..d of each stage through `nn.scan`, so compile time does not grow
with depth. Its parameter tree stacks those blocks under `sI_rest`; `stack_block_params` / `unstack_block_params`
convert between that and the unrolled `sI_bJ` layout, which is the layout of checkpoints and weight imports.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from regnet_jax import batchnorm_cpu, layers, onednn
from regnet_jax.specs import AnyNetSpec

Dtype = Any


class _ScannedBlock(nn.Module):
  """Adapter giving a block the (carry, x) -> (carry, out) signature nn.scan wants."""

  block_cls: Any
  block_kwargs: Any

  @nn.compact
  def __call__(self, x, _):
    return self.block_cls(**dict(self.block_kwargs), name="block")(x), None


class AnyNet(nn.Module):
  """The network. `__call__(images, train)` takes NHWC images and returns float32 logits.

  Stage outputs are sown into the `intermediates` collection (`stem_out`, `s1_out`, ..., `head_out`) for shape summaries.
  """

  spec: AnyNetSpec
  num_classes: int = 1000
  conv_impl: str = "auto"
  bn_impl: str = "auto"
  bn_groups: int = 1
  scan_blocks: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    spec = self.spec
    common = dict(train=train, conv_impl=self.conv_impl, bn_impl=self.bn_impl, bn_groups=self.bn_groups, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    # Training on the CPU keeps the activations in oneDNN's blocked layout between layers where it can
    # (layers.network_blocked); the parameters are the same either way.
    blocked = layers.network_blocked(spec, train=train, conv_impl=self.conv_impl, bn_impl=self.bn_impl,
                                     dtype=self.dtype)
    if blocked:
      common["blocked"] = True
    nhwc = onednn.from_blocked if blocked else (lambda a: a)
    x = layers.Stem(stem_type=spec.stem_type, width=spec.stem_w, name="stem", **common)(x.astype(self.dtype))
    self.sow("intermediates", "stem_out", nhwc(x))
    block_cls = layers.BLOCKS[spec.block_type]
    for i, stage in enumerate(spec.stages, start=1):
      kwargs = dict(w_out=stage.width, **common)
      if spec.block_type == "bottleneck":
        kwargs.update(bot_mul=stage.bot_mul, group_w=stage.group_w, se_ratio=spec.se_ratio)
      x = block_cls(stride=stage.stride, name=f"s{i}_b1", **kwargs)(x)
      if self.scan_blocks and stage.depth > 2:
        scanned = nn.scan(_ScannedBlock, variable_axes={"params": 0, "batch_stats": 0},
                          split_rngs={"params": True}, length=stage.depth - 1)
        x, _ = scanned(block_cls, tuple(kwargs.items()), name=f"s{i}_rest")(x, None)
      else:
        for j in range(2, stage.depth + 1):
          x = block_cls(stride=1, name=f"s{i}_b{j}", **kwargs)(x)
      self.sow("intermediates", f"s{i}_out", nhwc(x))
    x = layers.Head(num_classes=self.num_classes, head_w=spec.head_w, name="head", **common)(x)
    self.sow("intermediates", "head_out", x)
    return x


def build_model(spec: AnyNetSpec, *, num_classes: int = 1000, conv_impl: str = "auto", bn_impl: str = "auto",
                bn_groups: int = 1, scan_blocks: bool = False, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> AnyNet:
  """The one way to make a model from a spec (configs and the CLIs call this)."""
  if not isinstance(spec, AnyNetSpec):
    raise TypeError(f"build_model needs an AnyNetSpec, got {type(spec).__name__}; use zoo.get_spec(name)")
  if num_classes < 1:
    raise ValueError(f"num_classes={num_classes} must be >= 1")
  if bn_impl not in ("auto",) + batchnorm_cpu.BN_IMPLS:
    raise ValueError(f"bn_impl={bn_impl!r} is not one of auto, {', '.join(batchnorm_cpu.BN_IMPLS)}")
  if bn_groups < 1:
    raise ValueError(f"bn_groups={bn_groups} must be >= 1")
  return AnyNet(spec=spec, num_classes=num_classes, conv_impl=conv_impl, bn_impl=bn_impl, bn_groups=bn_groups,
                scan_blocks=scan_blocks, dtype=dtype, param_dtype=param_dtype)


def _scanned_stages(spec: AnyNetSpec):
  return [(i, s.depth) for i, s in enumerate(spec.stages, start=1) if s.depth > 2]


def stack_block_params(spec: AnyNetSpec, tree: dict) -> dict:
  """Unrolled layout (`sI_bJ`) -> scan layout (`sI_rest/block`, leading axis = block 2..d). Any collection."""
  tree = dict(tree)
  for i, depth in _scanned_stages(spec):
    names = [f"s{i}_b{j}" for j in range(2, depth + 1)]
    if not all(n in tree for n in names):
      continue
    blocks = [tree.pop(n) for n in names]
    tree[f"s{i}_rest"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}
  return tree


def unstack_block_params(spec: AnyNetSpec, tree: dict) -> dict:
  """Scan layout -> unrolled layout; the inverse of `stack_block_params`."""
  tree = dict(tree)
  for i, depth in _scanned_stages(spec):
    rest = tree.pop(f"s{i}_rest", None)
    if rest is None:
      continue
    for j in range(2, depth + 1):
      tree[f"s{i}_b{j}"] = jax.tree.map(functools.partial(lambda k, a: a[k], j - 2), rest["block"])
  return tree
