"""Training-mode batch norm fused with the residual add and ReLU after it, on XLA:CPU: `bn_impl="native"`.

Why: with the convolutions in oneDNN (regnet_jax/onednn.py), XLA:CPU's batch norm became the other half of a
RegNet train step: it runs each BN as several fusions, each a full pass over the activation, most on one core.
regnet_jax/csrc/batchnorm_cpu.cc computes `relu(bn(x) + residual)` in two passes (statistics; normalise, add,
clamp) and its gradient in two (the channel reductions, writing the residual's gradient; dx), on all OpenMP
threads. It is built into the oneDNN extension's library, so it is available exactly when `onednn.available()`.

Numerics: float32 statistics for float32 and bfloat16 activations (shifted sums, float within 64-row blocks,
double across them), the same formulas as layers._batch_norm_train, so results agree with bn_impl="xla" to float
rounding. Reverse-mode differentiable (a custom_vjp); the gradient through the returned mean and variance (zero
in training, where they only feed the running averages) is added in JAX when it is not symbolically zero.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from regnet_jax import onednn

BN_IMPLS = ("xla", "native")
DTYPES = onednn.DTYPES


def resolve_impl(impl: str, dtype) -> str:
  """"auto" -> "native" on a single CPU device for float32 / bfloat16 when the extension builds, else "xla"."""
  if impl not in ("auto",) + BN_IMPLS:
    raise ValueError(f"bn_impl={impl!r} is not one of auto, {', '.join(BN_IMPLS)}")
  native_ok = jax.default_backend() == "cpu" and jnp.dtype(dtype) in DTYPES
  if impl == "native":
    if not native_ok:
      raise ValueError(f'bn_impl="native" runs float32 / bfloat16 on the CPU only (here: {jax.default_backend()}, '
                       f'{jnp.dtype(dtype).name}); use bn_impl="auto"')
    if not onednn.available():
      raise onednn.OneDnnUnavailable(f'bn_impl="native" is unavailable: {onednn.unavailable_reason()}')
    return impl
  if impl == "auto":
    # Several devices: the FFI call has no partitioning rule, XLA would gather a sharded batch onto each device.
    return "native" if native_ok and jax.device_count() == 1 and onednn.available() else "xla"
  return impl


def _target(name):
  return onednn._FFI_PREFIX + name  # registered by onednn._load()


def _layout_attrs(layout):
  x_blocked, y_blocked, hw = layout
  return dict(x_blocked=bool(x_blocked), y_blocked=bool(y_blocked), hw=np.int64(hw))


def _forward(x3, scale, bias, res3, epsilon, relu, layout):
  g, _, c = x3.shape
  stats = jax.ShapeDtypeStruct((g, c), jnp.float32)
  out = (jax.ShapeDtypeStruct(x3.shape, x3.dtype), stats, stats)
  args = (x3, scale, bias) if res3 is None else (x3, scale, bias, res3)
  name = "RegnetBnFwd" if res3 is None else "RegnetBnFwdResidual"
  return jax.ffi.ffi_call(_target(name), out, vmap_method="sequential")(*args, eps=np.float32(epsilon),
                                                                         relu=bool(relu), **_layout_attrs(layout))


# layout: (x_blocked, y_blocked, H*W); the (G, R, C) arrays hold the blocked data as raw reshapes.
# twin: return y twice, (y, y, mean, var). A value used twice gets two cotangents, which JAX sums in a separate
# pass over the activation before they reach the backward; as two outputs, each use's cotangent arrives apart and
# the backward kernel sums them as it reads them (RegnetBnBwd2 / RegnetBnBwdResidual2).
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _bn(x3, scale, bias, res3, epsilon, relu, layout, twin):
  y, mean, var = _forward(x3, scale, bias, res3, epsilon, relu, layout)
  return (y, y, mean, var) if twin else (y, mean, var)


def _bn_fwd(x3, scale, bias, res3, epsilon, relu, layout, twin):
  # symbolic_zeros=True hands the primals over wrapped; None (no residual) has no leaves and stays None.
  x3, scale, bias = x3.value, scale.value, bias.value
  res3 = None if res3 is None else res3.value
  y, mean, var = _forward(x3, scale, bias, res3, epsilon, relu, layout)
  # Without a residual the backward recomputes the ReLU mask from x, so y is not kept for it.
  out = (y, y, mean, var) if twin else (y, mean, var)
  return out, (x3, y if res3 is not None else None, mean, var, scale, bias)


def _bn_bwd(epsilon, relu, layout, twin, saved, cts):
  x3, y, mean, var, scale, bias = saved
  has_res = y is not None
  if twin:
    dy, dy2, dmean, dvar = cts
    if isinstance(dy, SymbolicZero):  # one use left unused (the last block's twin): a one-part gradient
      dy, dy2 = dy2, dy
    dy2 = None if isinstance(dy2, SymbolicZero) else dy2.astype(x3.dtype)
  else:
    (dy, dmean, dvar), dy2 = cts, None
  dy = jnp.zeros_like(x3) if isinstance(dy, SymbolicZero) else dy.astype(x3.dtype)
  out = [jax.ShapeDtypeStruct(x3.shape, x3.dtype), jax.ShapeDtypeStruct(scale.shape, jnp.float32),
         jax.ShapeDtypeStruct(scale.shape, jnp.float32)]
  if has_res:
    out.append(jax.ShapeDtypeStruct(x3.shape, x3.dtype))
  name = ("RegnetBnBwdResidual" if has_res else "RegnetBnBwd") + ("2" if dy2 is not None else "")
  dys = (dy,) if dy2 is None else (dy, dy2)
  args = (x3, y, *dys, mean, var, scale) if has_res else (x3, *dys, mean, var, scale, bias)
  grads = jax.ffi.ffi_call(_target(name), out, vmap_method="sequential")(*args, eps=np.float32(epsilon),
                                                                          relu=bool(relu), **_layout_attrs(layout))
  dx, dscale, dbias = grads[:3]
  dres = grads[3] if has_res else None
  zero_m, zero_v = isinstance(dmean, SymbolicZero), isinstance(dvar, SymbolicZero)
  if not (zero_m and zero_v):
    if layout[0]:
      raise NotImplementedError("gradients through the returned batch statistics are not implemented for a blocked "
                                "x; train on NHWC (conv_impl=onednn) to differentiate them")
    # The statistics' own cotangents (not used by training): d mean / dx = 1/n, d var / dx = 2 (x - mean) / n.
    n = x3.shape[1]
    extra = 0.0 if zero_m else dmean[:, None, :] / n
    if not zero_v:
      extra = extra + 2.0 * dvar[:, None, :] * (x3.astype(jnp.float32) - mean[:, None, :]) / n
    dx = (dx.astype(jnp.float32) + extra).astype(x3.dtype)
  return dx, dscale, dbias, dres


_bn.defvjp(_bn_fwd, _bn_bwd, symbolic_zeros=True)


def batch_norm_act(xg, scale, bias, residual=None, *, epsilon: float, relu: bool, x_blocked: bool = False,
                   y_blocked: bool = False, twin: bool = False):
  """relu?(batch_norm(xg) + residual?) for xg (groups, batch, ..., C), statistics per group over all axes but
  the first and last; returns (y like xg, mean (groups, C), biased var (groups, C)), statistics float32.

  twin: returns ((y, y_twin), mean, var), two copies of y for its two consumers, so that the backward pass sums
  their gradients inside the kernel instead of in a separate pass (see _bn). Values are identical.

  x_blocked: xg is (groups, batch, C // 16, H, W, 16), oneDNN's nChw16c (regnet_jax.onednn.to_blocked);
  y_blocked: y (and the residual) in that layout. A change of layout costs nothing: the kernels read and write
  each element once either way.

  Like layers._batch_norm_train followed by the add and ReLU; scale and bias float32 (C,).
  """
  if not onednn.available():  # also registers the kernels with XLA
    raise onednn.OneDnnUnavailable(f'bn_impl="native" is unavailable: {onednn.unavailable_reason()}')
  if jnp.dtype(xg.dtype) not in DTYPES:
    raise ValueError(f'bn_impl="native" takes float32 or bfloat16 activations, got {xg.dtype}')
  g = xg.shape[0]
  if x_blocked:
    if xg.ndim != 6 or xg.shape[-1] != onednn.BLOCK:
      raise ValueError(f"x_blocked: xg must be (groups, batch, C // 16, H, W, 16), got {xg.shape}")
    c, spatial = xg.shape[2] * xg.shape[-1], xg.shape[3:5]
  else:
    c, spatial = xg.shape[-1], xg.shape[2:-1]
  if (x_blocked or y_blocked) and (len(spatial) != 2 or c % onednn.BLOCK):
    raise ValueError(f"the blocked layout needs (..., H, W, C) activations with C % 16 == 0, got {xg.shape}")
  hw = math.prod(spatial)
  if x_blocked == y_blocked:
    y_shape = xg.shape
  elif y_blocked:
    y_shape = (g, xg.shape[1], c // onednn.BLOCK, *spatial, onednn.BLOCK)
  else:
    y_shape = (g, xg.shape[1], *spatial, c)
  x3 = xg.reshape(g, xg.shape[1] * hw, c)
  res3 = None if residual is None else residual.astype(xg.dtype).reshape(x3.shape)
  layout = (bool(x_blocked), bool(y_blocked), int(hw))
  outs = _bn(x3, scale.astype(jnp.float32), bias.astype(jnp.float32), res3, float(epsilon), bool(relu), layout,
             bool(twin))
  mean, var = outs[-2:]
  if twin:
    return (outs[0].reshape(y_shape), outs[1].reshape(y_shape)), mean, var
  return outs[0].reshape(y_shape), mean, var
