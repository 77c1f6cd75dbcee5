"""Building blocks of AnyNet as Flax linen modules: conv (formulation switch), batch norm, stems, blocks, SE, head.

Submodule names are a contract (weight import and checkpoints depend on them): stem `stem/{conv,bn}`; blocks
`a`, `a_bn`, `b`, `b_bn`, `se/{reduce,expand}`, `c`, `c_bn`, `proj`, `proj_bn`; head `head/{conv,conv_bn,fc}`.
Initialisation follows pycls: conv kernels N(0, sqrt(2 / (k*k*w_out))) ignoring groups, BN scale 1 / bias 0,
dense N(0, 0.01), biases 0.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from regnet_jax import batchnorm_cpu, convs, onednn

Dtype = Any

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5


def conv_init(k: int, features: int):
  """pycls: fan-out normal init, deliberately ignoring groups."""
  return nn.initializers.normal(stddev=math.sqrt(2.0 / (k * k * features)))


class Conv(nn.Module):
  """k x k conv, symmetric padding (k-1)//2 (pycls/torchvision, not 'SAME'), kernel HWIO like nn.Conv.

  `conv_impl` picks the formulation (see `regnet_jax.convs`); every formulation uses this same parameter.
  """

  features: int
  kernel_size: int
  stride: int = 1
  groups: int = 1
  use_bias: bool = False
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, blocked: bool = False):
    """blocked: x (and the result) in oneDNN's nChw16c layout, (N, C // 16, H, W, 16); the oneDNN conv only
    (see convs `onednn_blocked`)."""
    k, cin = self.kernel_size, x.shape[1] * x.shape[-1] if blocked else x.shape[-1]
    if cin % self.groups or self.features % self.groups:
      raise ValueError(f"conv {self.name}: groups={self.groups} must divide in={cin} and out={self.features}")
    kernel = self.param("kernel", conv_init(k, self.features), (k, k, cin // self.groups, self.features),
                        self.param_dtype)
    if blocked:
      if self.use_bias:
        raise ValueError(f"conv {self.name}: the blocked layout takes convs without bias")
      return onednn.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.groups, blocked=True)
    y = convs.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), stride=self.stride, groups=self.groups,
                     impl=self.conv_impl)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(self.dtype)
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train(xg, scale, bias, epsilon):
  """Training-mode batch norm of xg (groups, batch, ..., C) over all axes but the first and last.

  Returns (y in xg.dtype, mean, biased var), statistics in scale.dtype (>= f32) with shape (groups, 1, ..., 1, C).
  Written with its own VJP because autodiff of the forward formulas makes XLA:CPU stream the activation and its
  gradient through memory 5-6 times; the closed form below (PyTorch's batch_norm_backward) needs one pass for
  the two reductions and one for dx. Being a custom_vjp, it is reverse-mode differentiable only (jax.jvp raises),
  like the non-xla conv formulations.
  """
  return _batch_norm_train_fwd(xg, scale, bias, epsilon)[0]


def _bn_axes(xg):
  return tuple(range(1, xg.ndim - 1))


def _batch_norm_train_fwd(xg, scale, bias, epsilon):
  sd, axes = scale.dtype, _bn_axes(xg)
  xs = xg.astype(sd)
  mean = jnp.mean(xs, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(xs - mean), axis=axes, keepdims=True)
  rstd = jax.lax.rsqrt(var + epsilon)
  mul = scale * rstd
  # (x - mean) * mul, not x * mul - mean * mul: the folded form loses the digits of x when |mean| >> std.
  y = (xg - mean.astype(xg.dtype)) * mul.astype(xg.dtype) + bias.astype(xg.dtype)
  return (y, mean, var), (xg, mean, rstd, scale)


def _batch_norm_train_bwd(epsilon, res, cts):
  del epsilon
  xg, mean, rstd, scale = res
  dy, dmean, dvar = cts
  sd, axes = scale.dtype, _bn_axes(xg)
  n = math.prod(xg.shape[a] for a in axes)
  xc = xg.astype(sd) - mean
  xhat = xc * rstd
  dys = dy.astype(sd)
  sum_dy = jnp.sum(dys, axis=axes, keepdims=True)
  sum_dy_xhat = jnp.sum(dys * xhat, axis=axes, keepdims=True)
  # d/dx of y = (x - mean) * rstd * scale + bias through mean and var, plus the statistics' own cotangents
  # (zero in training: running averages do not reach the loss).
  dx = (scale * rstd) * (dys - (sum_dy + xhat * sum_dy_xhat) / n) + (dmean + 2.0 * dvar * xc) / n
  chan = tuple(range(xg.ndim - 1))
  return dx.astype(xg.dtype), jnp.sum(sum_dy_xhat, axis=chan), jnp.sum(sum_dy, axis=chan)


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
  """Batch norm with PyTorch semantics (eps 1e-5, momentum 0.1, unbiased running variance).

  `__call__(x, residual=None, relu=False)` returns relu?(bn(x) + residual?): the add and ReLU that follow a BN in
  every block are part of it so that `impl="native"` (regnet_jax.batchnorm_cpu) can fuse them; `impl="xla"` is
  the plain JAX formulation, `"auto"` picks native on a single CPU device.

  Under `jax.jit` over a data-sharded batch, statistics over the batch axis are global (synchronised BN).
  `num_groups > 1` splits the batch into that many equal groups, each normalised with its own statistics: with
  one group per device this reproduces per-device BN (pycls's default) on any number of devices.
  Statistics are computed in float32 (float64 for float64 models) whatever the compute dtype.
  """

  use_running_average: bool
  num_groups: int = 1
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, residual=None, relu: bool = False, *, x_blocked: bool = False, y_blocked: bool = False,
               twin: bool = False):
    """x_blocked / y_blocked: x / the result (and the residual) in oneDNN's nChw16c layout (N, C // 16, H, W,
    16) instead of NHWC; training with the native batch norm only (regnet_jax.batchnorm_cpu.batch_norm_act).
    twin: returns (y, y), the same values, for a result with two consumers: with the native BN their gradients
    are then summed inside its backward kernel rather than in a pass of their own (batchnorm_cpu._bn)."""
    c = x.shape[1] * x.shape[-1] if x_blocked else x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype).astype(jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype).astype(jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    blocked = x_blocked or y_blocked
    if blocked and (self.use_running_average or batchnorm_cpu.resolve_impl(self.impl, x.dtype) != "native"):
      raise ValueError(f"batch norm {self.name}: the blocked layout is for training with bn_impl native")
    if self.use_running_average:
      mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = (x - ra_mean.value.astype(self.dtype)) * mul.astype(self.dtype) + bias.astype(self.dtype)
      y = _add_relu(y, residual, relu)
      return (y, y) if twin else y

    g = self.num_groups
    if x.shape[0] % g:
      raise ValueError(f"batch norm: batch {x.shape[0]} is not divisible into bn groups={g}")
    stat_dtype = jnp.promote_types(self.dtype, jnp.float32)  # at least f32, f64 for f64 models
    xg = x.reshape((g, x.shape[0] // g) + x.shape[1:])
    if batchnorm_cpu.resolve_impl(self.impl, x.dtype) == "native":
      rg = None if residual is None else residual.reshape(xg.shape)
      y, mean, var = batchnorm_cpu.batch_norm_act(xg, scale, bias, rg, epsilon=self.epsilon, relu=relu,
                                                  x_blocked=x_blocked, y_blocked=y_blocked, twin=twin)
    else:
      y, mean, var = _batch_norm_train(xg, scale.astype(stat_dtype), bias.astype(stat_dtype), self.epsilon)
      y = _add_relu(y.reshape(x.shape), residual, relu)
      y = (y, y) if twin else y
    if not self.is_initializing():
      n = xg.size // (g * c)
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, axis=tuple(range(mean.ndim - 1)))
      ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(unbiased, axis=tuple(range(var.ndim - 1)))
    shape = x.shape if not blocked else (x.shape[0],) + (y[0] if twin else y).shape[2:]
    return (y[0].reshape(shape), y[1].reshape(shape)) if twin else y.reshape(shape)


def primary(x):
  """The array of an activation that may be a (y, y_twin) pair (the blocked trunk's, see _Layers.blocked)."""
  return x[0] if isinstance(x, tuple) else x


def _add_relu(y, residual, relu):
  if residual is not None:
    y = y + residual.astype(y.dtype)
  return nn.relu(y) if relu else y


def _blocked_ok(train, conv_impl, bn_impl, dtype, channels, group_widths=()) -> bool:
  # auto: float32 only. In bf16 oneDNN's 1x1 kernels are slower on the blocked layout than its NHWC brgemm ones
  # for narrow layers (32 channels: 1.5-1.8x per layer here), and blocking just the grouped convs measured a
  # wash on regnetx32 and 5% slower on regnetx_400mf. conv_impl="onednn_blocked" uses the layout in bf16 too.
  if conv_impl == "auto" and jnp.dtype(dtype) != jnp.float32:
    return False
  return (train and batchnorm_cpu.resolve_impl(bn_impl, dtype) == "native"
          and convs.blocked_layout(conv_impl, channels=channels, group_widths=group_widths, dtype=dtype))


def network_blocked(spec, *, train: bool, conv_impl: str, bn_impl: str, dtype) -> bool:
  """Whether a whole AnyNet trains on oneDNN's blocked layout (convs `onednn_blocked`): bottleneck blocks, a stem
  without max-pool, every width (stem, stages, bottlenecks, head) a multiple of 16, the oneDNN convs and the
  native BN (with auto: float32 only, see _blocked_ok). Its 1x1 convs then run 1.3-2x faster and its grouped
  ones up to 5x (README "Performance")."""
  if spec.block_type != "bottleneck" or spec.stem_type == "res":
    return False
  bottlenecks = [int(round(s.width * s.bot_mul)) for s in spec.stages]
  widths = [spec.stem_w] + [w for s, w_b in zip(spec.stages, bottlenecks) for w in (s.width, w_b)]
  group_widths = [s.group_w for s, w_b in zip(spec.stages, bottlenecks) if s.group_w < w_b]
  return _blocked_ok(train, conv_impl, bn_impl, dtype, widths + ([spec.head_w] if spec.head_w else []),
                     group_widths)


class _Layers(nn.Module):
  """Mixin: shared construction arguments and conv/BN factories, so every block builds layers the same way."""

  train: bool = False
  conv_impl: str = "auto"
  bn_impl: str = "auto"
  bn_groups: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  # Activations between modules in oneDNN's blocked layout (N, C // 16, H, W, 16) (network_blocked): the stem
  # returns it, bottleneck blocks take and return it, the head takes it. There the stem and blocks return a pair
  # (y, y_twin) of equal arrays: the next block reads y in its first conv and y_twin in its shortcut, so that the
  # two gradients meet in the BN backward that made y (BatchNorm's twin) instead of in a separate add, 5-6% of
  # an f32 regnetx32 / regnetx_400mf train step (README "Performance").
  blocked: bool = False

  def conv(self, features, k, name, *, stride=1, groups=1, use_bias=False):
    return Conv(features, k, stride=stride, groups=groups, use_bias=use_bias, conv_impl=self.conv_impl,
                dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def bn(self, name):
    return BatchNorm(use_running_average=not self.train, num_groups=self.bn_groups, impl=self.bn_impl,
                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def blocked_layout(self, channels, group_widths=()) -> bool:
    """Whether convs of these widths may exchange oneDNN's blocked layout, the BNs around them converting for
    free (convs `onednn_blocked`): training with the native BN, and convs.blocked_layout."""
    return _blocked_ok(self.train, self.conv_impl, self.bn_impl, self.dtype, channels, group_widths)

  def conv_bn_blocked(self, x, features, k, name, *, stride=1, groups=1, relu=True, residual=None, twin=False):
    """conv_bn with x, the residual and the result in the blocked layout; twin: the result as a pair."""
    y = self.conv(features, k, name, stride=stride, groups=groups)(x, blocked=True)
    return self.bn(f"{name}_bn")(y, residual=residual, relu=relu, x_blocked=True, y_blocked=True, twin=twin)

  def conv_bn(self, x, features, k, name, *, stride=1, groups=1, relu=True, residual=None, bn_name=None):
    """relu?(bn(conv(x)) + residual?); the BN module is `bn_name`, default f"{name}_bn"."""
    bn_name = bn_name or f"{name}_bn"
    if self.folds_bn(x, features, k, stride=stride, groups=groups):
      return self.conv_bn_folded(x, name, bn_name, stride=stride, groups=groups, relu=relu, residual=residual)
    y = self.conv(features, k, name, stride=stride, groups=groups)(x)
    return self.bn(bn_name)(y, residual=residual, relu=relu)

  def folds_bn(self, x, features, k, *, stride=1, groups=1) -> bool:
    """Inference with a oneDNN conv: the BN is folded into it (conv_bn_folded). Not at init, which declares the
    parameters through the modules themselves."""
    if self.train or self.blocked or self.is_initializing() or x.ndim != 4:
      return False
    return convs.resolve_impl(self.conv_impl, k=k, stride=stride, groups=groups, cin=x.shape[-1], cout=features,
                              spatial=x.shape[1:3], dtype=self.dtype, batch=x.shape[0]) == "onednn"

  def conv_bn_folded(self, x, name, bn_name, *, stride, groups, relu, residual):
    """conv_bn at inference as one oneDNN call: the BN's affine map (running statistics) folded into the kernel
    and a bias, the add and ReLU as post-ops (onednn.conv2d_bn_act). Same parameters as the unfolded pair;
    equal to it to float rounding (f32 accumulation, one rounding of y instead of two). Saves the pass over y
    that BN + add + ReLU cost (40% of a bf16 regnetx32 eval step, benchmarks/profile_step.py)."""
    params, stats = self.variables["params"], self.variables["batch_stats"][bn_name]
    bn = params[bn_name]
    mul = bn["scale"].astype(jnp.float32) * jax.lax.rsqrt(stats["var"].astype(jnp.float32) + BN_EPSILON)
    shift = bn["bias"].astype(jnp.float32) - stats["mean"].astype(jnp.float32) * mul
    kernel = (params[name]["kernel"].astype(jnp.float32) * mul).astype(self.dtype)
    return onednn.conv2d_bn_act(x.astype(self.dtype), kernel, shift, residual, stride=stride, groups=groups,
                                relu=relu)


class Stem(_Layers):
  """`simple`: 3x3 s2 conv-BN-ReLU; `res`: 7x7 s2 conv-BN-ReLU + 3x3 s2 max-pool; `cifar`: 3x3 s1 conv-BN-ReLU."""

  stem_type: str = "simple"
  width: int = 32

  @nn.compact
  def __call__(self, x):
    k, stride = {"simple": (3, 2), "res": (7, 2), "cifar": (3, 1)}[self.stem_type]
    if self.blocked and self.stem_type == "res":
      raise ValueError("the blocked layout takes the simple or cifar stem (no max-pool)")
    if self.blocked:
      x = self.bn("bn")(self.conv(self.width, k, "conv", stride=stride)(x), relu=True, y_blocked=True, twin=True)
    else:
      x = self.conv_bn(x, self.width, k, "conv", stride=stride, bn_name="bn")
    if self.stem_type == "res":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return x


class SqueezeExcitation(nn.Module):
  """Global pool -> 1x1 conv with bias (w -> w_se) -> ReLU -> 1x1 conv with bias -> sigmoid -> scale."""

  w_se: int
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, blocked: bool = False):
    """blocked: x in the blocked layout (N, C // 16, H, W, 16); the two 1x1 convs see the pooled NHWC vector."""
    w = x.shape[1] * x.shape[-1] if blocked else x.shape[-1]
    kw = dict(use_bias=True, conv_impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype)
    s = jnp.mean(x, axis=(2, 3) if blocked else (1, 2), keepdims=True)
    if blocked:
      s = s.reshape(x.shape[0], 1, 1, w)
    s = nn.relu(Conv(self.w_se, 1, name="reduce", **kw)(s))
    s = nn.sigmoid(Conv(w, 1, name="expand", **kw)(s))
    if blocked:
      s = s.reshape(x.shape[0], x.shape[1], 1, 1, x.shape[-1])
    return x * s


class VanillaBlock(_Layers):
  """[3x3(stride) BN ReLU] x 2, no residual."""

  w_out: int = 0
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    x = self.conv_bn(x, self.w_out, 3, "a", stride=self.stride)
    return self.conv_bn(x, self.w_out, 3, "b")


class _Residual(_Layers):
  """ReLU(proj(x) + f(x)); proj is 1x1(stride) conv + BN, used iff the width or resolution changes."""

  w_out: int = 0
  stride: int = 1

  def shortcut(self, x):
    if x.shape[-1] != self.w_out or self.stride != 1:
      return self.conv_bn(x, self.w_out, 1, "proj", stride=self.stride, relu=False)
    return x


class BasicBlock(_Residual):
  """ReLU(proj(x) + [3x3(stride) BN ReLU 3x3 BN](x))."""

  @nn.compact
  def __call__(self, x):
    y = self.conv_bn(x, self.w_out, 3, "a", stride=self.stride)
    return self.conv_bn(y, self.w_out, 3, "b", residual=self.shortcut(x))


class BottleneckBlock(_Residual):
  """X block (Y with se_ratio > 0): 1x1 -> 3x3 grouped with the stride -> [SE] -> 1x1, plus shortcut.

  The SE width is round(se_ratio * w_in) with w_in the block's INPUT width, not the bottleneck width: pycls does
  this on purpose (pycls issues #80/#81) and its published complexities depend on it.
  """

  bot_mul: float = 1.0
  group_w: int = 1
  se_ratio: float = 0.0

  @nn.compact
  def __call__(self, x):
    w_in = x[0].shape[1] * x[0].shape[-1] if self.blocked else x.shape[-1]
    w_b = int(round(self.w_out * self.bot_mul))
    w_se = int(round(w_in * self.se_ratio))
    groups = w_b // self.group_w
    if self.blocked:
      return self.blocked_call(x, w_in, w_b, w_se, groups)
    if groups > 1 and self.blocked_layout((w_b,), group_widths=(self.group_w,)):
      # Just the grouped conv in the blocked layout (its kernel gradient gains most), the BNs converting.
      y = self.bn("a_bn")(self.conv(w_b, 1, "a")(x), relu=True, y_blocked=True)
      y = self.conv(w_b, 3, "b", stride=self.stride, groups=groups)(y, blocked=True)
      y = self.bn("b_bn")(y, relu=True, x_blocked=True)
    else:
      y = self.conv_bn(x, w_b, 1, "a")
      y = self.conv_bn(y, w_b, 3, "b", stride=self.stride, groups=groups)
    if w_se:
      y = SqueezeExcitation(w_se, conv_impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype,
                            name="se")(y)
    return self.conv_bn(y, self.w_out, 1, "c", residual=self.shortcut(x))

  def blocked_call(self, x, w_in, w_b, w_se, groups):
    """The same block on blocked activations (network_blocked): x and the result are (y, y_twin) pairs."""
    x, x_twin = x
    y = self.conv_bn_blocked(x, w_b, 1, "a")
    y = self.conv_bn_blocked(y, w_b, 3, "b", stride=self.stride, groups=groups)
    if w_se:
      y = SqueezeExcitation(w_se, conv_impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype,
                            name="se")(y, blocked=True)
    shortcut = x_twin
    if w_in != self.w_out or self.stride != 1:
      shortcut = self.conv_bn_blocked(x_twin, self.w_out, 1, "proj", stride=self.stride, relu=False)
    return self.conv_bn_blocked(y, self.w_out, 1, "c", residual=shortcut, twin=True)


BLOCKS = {"vanilla": VanillaBlock, "basic": BasicBlock, "bottleneck": BottleneckBlock}


class Head(_Layers):
  """[1x1 conv BN ReLU if head_w] -> global average pool -> dense with bias (pycls AnyHead). Logits in f32."""

  num_classes: int = 1000
  head_w: int = 0

  @nn.compact
  def __call__(self, x):
    if self.blocked:
      x = primary(x)
      if self.head_w > 0:
        x = self.conv_bn_blocked(x, self.head_w, 1, "conv")
      x = jnp.mean(x.astype(jnp.float32), axis=(2, 3)).reshape(x.shape[0], -1)
    else:
      if self.head_w > 0:
        x = self.conv_bn(x, self.head_w, 1, "conv")
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros,
                    dtype=jnp.float32, param_dtype=self.param_dtype, name="fc")(x)
