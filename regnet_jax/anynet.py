"""AnyNet: stem -> stages -> head, built from an AnyNetSpec. RegNets are AnyNets whose spec `regnet.py` generated.

`scan_blocks=True` runs the identical blocks 2..d of each stage through `nn.scan`, so compile time does not grow
with depth. Its parameter tree stacks those blocks under `sI_rest`; `stack_block_params` / `unstack_block_params`
convert between that and the unrolled `sI_bJ` layout, which is the layout of checkpoints and weight imports.

Backbone use follows timm's contract: `build_model(spec, features_only=True, out_indices=(1, 2, 3, 4))` returns
the NHWC feature maps of the stem (index 0) and the stages (1..n) instead of logits, and describes them in
`model.feature_info` (timm's `feature_info.get_dicts()`: num_chs, reduction, module, index). The classifier has
`forward_features` (the map before pooling) and `pre_logits` (the pooled vector the classifier's dense layer takes).
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from regnet_jax import batchnorm_cpu, layers, onednn
from regnet_jax.specs import AnyNetSpec

Dtype = Any

# Stride of each stem type (layers.Stem): `res` adds a stride-2 max-pool to its stride-2 conv.
_STEM_STRIDE = {"simple": 2, "res": 4, "cifar": 1}


class _ScannedBlock(nn.Module):
  """Adapter giving a block the (carry, x) -> (carry, out) signature nn.scan wants."""

  block_cls: Any
  block_kwargs: Any

  @nn.compact
  def __call__(self, x, _):
    return self.block_cls(**dict(self.block_kwargs), name="block")(x), None


def _num_levels(spec: AnyNetSpec) -> int:
  return 1 + len(spec.stages)  # the stem and every stage


def resolve_out_indices(spec: AnyNetSpec, out_indices) -> tuple[int, ...]:
  """out_indices (None = every level; negative ones count from the last stage) as indices 0..n, n = #stages."""
  n = _num_levels(spec)
  if out_indices is None:
    return tuple(range(n))
  try:
    given = tuple(operator.index(i) for i in out_indices)
  except TypeError:
    raise TypeError(f"out_indices must be a sequence of ints, got {out_indices!r}") from None
  valid = f"the valid range {-n}..{n - 1} (0 the stem, 1..{n - 1} the stages, -1 the last stage)"
  bad = [i for i in given if not -n <= i < n]
  if bad or not given:
    raise ValueError(f"out_indices={given} {f'has {bad} outside' if bad else 'is empty; pick from'} {valid}")
  resolved = tuple(i % n for i in given)
  if len(set(resolved)) != len(resolved):
    raise ValueError(f"out_indices={given} names a feature map twice (as {resolved}); each index of {valid} may "
                     "appear once")
  return resolved


def feature_info(spec: AnyNetSpec, out_indices=None) -> list[dict]:
  """timm's `feature_info.get_dicts()` for these levels: channels, stride against the input, module, index.

  Module names are timm's (`stem`, `s1`, ...); here `sI` stands for the blocks `sI_b1..sI_bd`.
  """
  levels, reduction = [], _STEM_STRIDE[spec.stem_type]
  levels.append({"num_chs": spec.stem_w, "reduction": reduction, "module": "stem"})
  for i, stage in enumerate(spec.stages, start=1):
    reduction *= stage.stride
    levels.append({"num_chs": stage.width, "reduction": reduction, "module": f"s{i}"})
  return [{**levels[i], "index": i} for i in resolve_out_indices(spec, out_indices)]


class _HeadConv(layers._Layers):  # pylint: disable=protected-access
  """The head's optional 1x1 conv-BN-ReLU alone (named `head`, the same factories as layers.Head), so that
  forward_features / pre_logits read the head's `conv` / `conv_bn` variables without building its classifier."""

  head_w: int = 0

  @nn.compact
  def __call__(self, x):
    return self.conv_bn(x, self.head_w, 1, "conv") if self.head_w > 0 else x


class AnyNet(nn.Module):
  """The network. `__call__(images, train)` takes NHWC images and returns float32 logits, or with
  `features_only` the list of NHWC feature maps at `out_indices` (0 = stem, i = stage i), in that order.

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
  # A backbone: no head (no head variables), __call__ returns the maps at out_indices (None = every level).
  features_only: bool = False
  out_indices: tuple[int, ...] | None = None

  @property
  def feature_info(self) -> list[dict]:
    """One dict per returned map, as timm's `feature_info.get_dicts()`; needs no variables."""
    return feature_info(self.spec, self.out_indices)

  def __call__(self, x, train: bool = False):
    return self._forward(x, train, "maps" if self.features_only else "logits")

  def forward_features(self, x, train: bool = False):
    """The NHWC map the head pools: the last stage's output (after the head's 1x1 conv when spec.head_w > 0, as
    timm's forward_features includes its final_conv)."""
    return self._forward(x, train, "features")

  def pre_logits(self, x, train: bool = False):
    """The float32 (batch, channels) vector the classifier's dense layer takes: forward_features, pooled."""
    return self._forward(x, train, "pre_logits")

  # The only compact method (linen allows one): __call__, forward_features and pre_logits each run it once, so
  # the submodules and their variable names are the same whichever output is asked for.
  @nn.compact
  def _forward(self, x, train: bool, output: str):
    spec = self.spec
    if self.features_only and output in ("features", "pre_logits"):
      raise ValueError(f"{'forward_features' if output == 'features' else 'pre_logits'} belongs to the classifier; "
                       "a features_only model has no head: call it (out_indices=(-1,) gives the last stage's map), "
                       "or build the model without features_only")
    common = dict(train=train, conv_impl=self.conv_impl, bn_impl=self.bn_impl, bn_groups=self.bn_groups, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    # Training on the CPU keeps the activations in oneDNN's blocked layout between layers where it can
    # (layers.network_blocked); the parameters are the same either way.
    blocked = layers.network_blocked(spec, train=train, conv_impl=self.conv_impl, bn_impl=self.bn_impl,
                                     dtype=self.dtype)
    nhwc = onednn.from_blocked if blocked else (lambda a: a)
    trunk = dict(common, blocked=True) if blocked else common
    x = layers.Stem(stem_type=spec.stem_type, width=spec.stem_w, name="stem", **trunk)(x.astype(self.dtype))
    # Plain NHWC whatever the layout (the blocked trunk's activations are (y, y_twin) pairs, layers._Layers); under
    # jit the conversions nobody reads are dropped.
    maps = [nhwc(layers.primary(x))]
    self.sow("intermediates", "stem_out", maps[-1])
    block_cls = layers.BLOCKS[spec.block_type]
    for i, stage in enumerate(spec.stages, start=1):
      kwargs = dict(w_out=stage.width, **trunk)
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
      maps.append(nhwc(layers.primary(x)))
      self.sow("intermediates", f"s{i}_out", maps[-1])
    if output == "maps":
      return [maps[i] for i in resolve_out_indices(spec, self.out_indices)]
    if output == "logits":  # layers.Head takes the blocked layout itself
      x = layers.Head(num_classes=self.num_classes, head_w=spec.head_w, name="head", **trunk)(x)
      self.sow("intermediates", "head_out", x)
      return x
    x = _HeadConv(head_w=spec.head_w, name="head", **common)(maps[-1])
    if output == "features":
      return x
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # as layers.Head pools


def build_model(spec: AnyNetSpec, *, num_classes: int = 1000, conv_impl: str = "auto", bn_impl: str = "auto",
                bn_groups: int = 1, scan_blocks: bool = False, dtype: Dtype = jnp.float32,
                param_dtype: Dtype = jnp.float32, features_only: bool = False, out_indices=None) -> AnyNet:
  """The one way to make a model from a spec (configs and the CLIs call this).

  features_only=True makes a backbone returning the NHWC maps at `out_indices` (None = stem and every stage;
  negative indices count from the last stage), described by `model.feature_info`; it has no head and ignores
  num_classes.
  """
  if not isinstance(spec, AnyNetSpec):
    raise TypeError(f"build_model needs an AnyNetSpec, got {type(spec).__name__}; use zoo.get_spec(name)")
  if num_classes < 1:
    raise ValueError(f"num_classes={num_classes} must be >= 1")
  if bn_impl not in ("auto",) + batchnorm_cpu.BN_IMPLS:
    raise ValueError(f"bn_impl={bn_impl!r} is not one of auto, {', '.join(batchnorm_cpu.BN_IMPLS)}")
  if bn_groups < 1:
    raise ValueError(f"bn_groups={bn_groups} must be >= 1")
  if out_indices is not None and not features_only:
    raise ValueError(f"out_indices={out_indices!r} selects the maps of a backbone; pass features_only=True too "
                     "(the classifier returns logits; its forward_features method gives the last map)")
  # Resolved here so that a bad index fails at build time, not at the first call.
  indices = resolve_out_indices(spec, out_indices) if features_only else None
  return AnyNet(spec=spec, num_classes=num_classes, conv_impl=conv_impl, bn_impl=bn_impl, bn_groups=bn_groups,
                scan_blocks=scan_blocks, dtype=dtype, param_dtype=param_dtype, features_only=features_only,
                out_indices=indices)


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
