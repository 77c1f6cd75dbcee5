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


def _forward(x3, scale, bias, res3, epsilon, relu):
  g, _, c = x3.shape
  stats = jax.ShapeDtypeStruct((g, c), jnp.float32)
  out = (jax.ShapeDtypeStruct(x3.shape, x3.dtype), stats, stats)
  args = (x3, scale, bias) if res3 is None else (x3, scale, bias, res3)
  name = "RegnetBnFwd" if res3 is None else "RegnetBnFwdResidual"
  return jax.ffi.ffi_call(_target(name), out, vmap_method="sequential")(*args, eps=np.float32(epsilon),
                                                                         relu=bool(relu))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _bn(x3, scale, bias, res3, epsilon, relu):
  return _forward(x3, scale, bias, res3, epsilon, relu)


def _bn_fwd(x3, scale, bias, res3, epsilon, relu):
  # symbolic_zeros=True hands the primals over wrapped; None (no residual) has no leaves and stays None.
  x3, scale, bias = x3.value, scale.value, bias.value
  res3 = None if res3 is None else res3.value
  y, mean, var = _forward(x3, scale, bias, res3, epsilon, relu)
  # Without a residual the backward recomputes the ReLU mask from x, so y is not kept for it.
  return (y, mean, var), (x3, y if res3 is not None else None, mean, var, scale, bias)


def _bn_bwd(epsilon, relu, saved, cts):
  x3, y, mean, var, scale, bias = saved
  has_res = y is not None
  dy, dmean, dvar = cts
  dy = jnp.zeros_like(x3) if isinstance(dy, SymbolicZero) else dy.astype(x3.dtype)
  out = [jax.ShapeDtypeStruct(x3.shape, x3.dtype), jax.ShapeDtypeStruct(scale.shape, jnp.float32),
         jax.ShapeDtypeStruct(scale.shape, jnp.float32)]
  if has_res:
    out.append(jax.ShapeDtypeStruct(x3.shape, x3.dtype))
  name = "RegnetBnBwdResidual" if has_res else "RegnetBnBwd"
  args = (x3, y, dy, mean, var, scale) if has_res else (x3, dy, mean, var, scale, bias)
  grads = jax.ffi.ffi_call(_target(name), out, vmap_method="sequential")(*args, eps=np.float32(epsilon),
                                                                          relu=bool(relu))
  dx, dscale, dbias = grads[:3]
  dres = grads[3] if has_res else None
  zero_m, zero_v = isinstance(dmean, SymbolicZero), isinstance(dvar, SymbolicZero)
  if not (zero_m and zero_v):
    # The statistics' own cotangents (not used by training): d mean / dx = 1/n, d var / dx = 2 (x - mean) / n.
    n = x3.shape[1]
    extra = 0.0 if zero_m else dmean[:, None, :] / n
    if not zero_v:
      extra = extra + 2.0 * dvar[:, None, :] * (x3.astype(jnp.float32) - mean[:, None, :]) / n
    dx = (dx.astype(jnp.float32) + extra).astype(x3.dtype)
  return dx, dscale, dbias, dres


_bn.defvjp(_bn_fwd, _bn_bwd, symbolic_zeros=True)


def batch_norm_act(xg, scale, bias, residual=None, *, epsilon: float, relu: bool):
  """relu?(batch_norm(xg) + residual?) for xg (groups, batch, ..., C), statistics per group over all axes but
  the first and last; returns (y like xg, mean (groups, C), biased var (groups, C)), statistics float32.

  Like layers._batch_norm_train followed by the add and ReLU; scale and bias float32 (C,).
  """
  if jnp.dtype(xg.dtype) not in DTYPES:
    raise ValueError(f'bn_impl="native" takes float32 or bfloat16 activations, got {xg.dtype}')
  g, c = xg.shape[0], xg.shape[-1]
  x3 = xg.reshape(g, math.prod(xg.shape[1:-1]), c)
  res3 = None if residual is None else residual.astype(xg.dtype).reshape(x3.shape)
  y, mean, var = _bn(x3, scale.astype(jnp.float32), bias.astype(jnp.float32), res3, float(epsilon), bool(relu))
  return y.reshape(xg.shape), mean, var
