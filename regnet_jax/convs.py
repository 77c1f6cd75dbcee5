"""2-D convolution formulations that are numerically equal to a grouped `lax.conv_general_dilated`.

DRAFT - exploratory version with every candidate formulation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def _geometry(x, kernel, stride, groups):
  n, h, w, cin = x.shape
  k, k2, cin_g, cout = kernel.shape
  if k != k2 or k % 2 == 0:
    raise ValueError(f"kernel must be square with an odd size, got {kernel.shape[:2]}")
  if groups < 1 or cin % groups or cout % groups or cin // groups != cin_g:
    raise ValueError(
        f"groups={groups} incompatible with x channels {cin} and kernel shape {kernel.shape}")
  ho = (h - 1) // stride + 1
  wo = (w - 1) // stride + 1
  return n, h, w, cin, k, cin_g, cout, ho, wo


def _acc_dtype(dtype):
  return jnp.float32 if dtype in (jnp.bfloat16, jnp.float16) else None


def _conv_xla(x, kernel, stride, groups):
  p = (kernel.shape[0] - 1) // 2
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((p, p), (p, p)),
      dimension_numbers=_DN, feature_group_count=groups)


def _conv_split(x, kernel, stride, groups):
  if groups == 1:
    return _conv_xla(x, kernel, stride, 1)
  xs = jnp.split(x, groups, axis=-1)
  ks = jnp.split(kernel, groups, axis=-1)
  return jnp.concatenate([_conv_xla(a, b, stride, 1) for a, b in zip(xs, ks)], axis=-1)


def _taps(x, k, stride, ho, wo):
  """The k*k shifted (and strided) views of the padded input, each (N, Ho, Wo, C)."""
  p = (k - 1) // 2
  if p:
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  n, _, _, c = x.shape
  out = []
  for i in range(k):
    for j in range(k):
      out.append(lax.slice(
          x, (0, i, j, 0), (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
          (1, stride, stride, 1)))
  return out


def _conv_im2col(x, kernel, stride, groups):
  n, h, w, cin, k, cin_g, cout, ho, wo = _geometry(x, kernel, stride, groups)
  taps = _taps(x, k, stride, ho, wo)
  t = k * k
  patches = taps[0][..., None, :] if t == 1 else jnp.stack(taps, axis=-2)  # N,Ho,Wo,T,Cin
  cout_g = cout // groups
  acc = _acc_dtype(x.dtype)
  if groups == 1:
    y = lax.dot_general(patches.reshape(n * ho * wo, t * cin), kernel.reshape(t * cin, cout),
                        (((1,), (0,)), ((), ())), preferred_element_type=acc)
  else:
    p5 = patches.reshape(n, ho, wo, t, groups, cin_g)
    k4 = kernel.reshape(t, cin_g, groups, cout_g)
    y = jnp.einsum("nhwtgc,tcgo->nhwgo", p5, k4, preferred_element_type=acc)
  return y.reshape(n, ho, wo, cout).astype(x.dtype)


def _conv_shift(x, kernel, stride, groups):
  n, h, w, cin, k, cin_g, cout, ho, wo = _geometry(x, kernel, stride, groups)
  taps = _taps(x, k, stride, ho, wo)
  cout_g = cout // groups
  acc_dt = _acc_dtype(x.dtype) or x.dtype
  kt = kernel.reshape(k * k, cin_g, cout)
  acc = None
  for t, xt in enumerate(taps):
    if cin_g == 1:  # depthwise (channel multiplier cout_g)
      xr = jnp.repeat(xt, cout_g, axis=-1) if cout_g > 1 else xt
      term = xr.astype(acc_dt) * kt[t, 0].astype(acc_dt)
    elif groups == 1:
      term = jnp.einsum("nhwc,co->nhwo", xt, kt[t], preferred_element_type=acc_dt)
    else:
      term = jnp.einsum("nhwgc,cgo->nhwgo", xt.reshape(n, ho, wo, groups, cin_g),
                        kt[t].reshape(cin_g, groups, cout_g),
                        preferred_element_type=acc_dt).reshape(n, ho, wo, cout)
    acc = term if acc is None else acc + term
  return acc.astype(x.dtype)


def _conv_blockdiag(x, kernel, stride, groups):
  if groups == 1:
    return _conv_xla(x, kernel, stride, 1)
  k, _, cin_g, cout = kernel.shape
  kk = kernel.reshape(k, k, cin_g, groups, cout // groups)
  eye = jnp.eye(groups, dtype=kernel.dtype)
  dense = jnp.einsum("abcgo,hg->abhcgo", kk, eye).reshape(k, k, groups * cin_g, cout)
  return _conv_xla(x, dense, stride, 1)


_IMPLS = {
    "xla": _conv_xla,
    "split": _conv_split,
    "im2col": _conv_im2col,
    "shift": _conv_shift,
    "blockdiag": _conv_blockdiag,
}
CONV_IMPLS = tuple(_IMPLS)


def resolve_impl(impl, *, k, stride, groups, cin, cout, spatial, backend=None):
  if impl in _IMPLS:
    return impl
  if impl != "auto":
    raise ValueError(f"unknown conv impl {impl!r}; known: {', '.join(CONV_IMPLS + ('auto',))}")
  return "xla"


def conv2d(x, kernel, *, stride=1, groups=1, impl="xla"):
  _geometry(x, kernel, stride, groups)
  impl = resolve_impl(impl, k=kernel.shape[0], stride=stride, groups=groups, cin=x.shape[-1],
                      cout=kernel.shape[-1], spatial=x.shape[1:3])
  return _IMPLS[impl](x, kernel, stride, groups)


def _s2d(x, kernel, stride, groups):
  """Stride-2 conv as a stride-1 (k+1)//2 conv on a space-to-depth input; split per group."""
  if stride == 1:
    return _conv_split(x, kernel, stride, groups)
  assert stride == 2
  n, h, w, cin, k, cin_g, cout, ho, wo = _geometry(x, kernel, stride, groups)
  p = (k - 1) // 2
  kk = (k + 1) // 2
  hp, wp = 2 * (ho + kk - 1), 2 * (wo + kk - 1)
  xp = jnp.pad(x, ((0, 0), (p, hp - h - p), (p, wp - w - p), (0, 0)))
  xs = xp.reshape(n, hp // 2, 2, wp // 2, 2, groups, cin_g).transpose(0, 1, 3, 5, 2, 4, 6)
  xs = xs.reshape(n, hp // 2, wp // 2, groups * 4 * cin_g)
  kp = jnp.pad(kernel, ((0, 2 * kk - k), (0, 2 * kk - k), (0, 0), (0, 0)))
  kp = kp.reshape(kk, 2, kk, 2, cin_g, cout).transpose(0, 2, 1, 3, 4, 5).reshape(kk, kk, 4 * cin_g, cout)
  def one(a, b):
    return lax.conv_general_dilated(a, b, (1, 1), "VALID", dimension_numbers=_DN)
  if groups == 1:
    return one(xs, kp)
  xg = jnp.split(xs, groups, axis=-1)
  kg = jnp.split(kp, groups, axis=-1)
  return jnp.concatenate([one(a, b) for a, b in zip(xg, kg)], axis=-1)


_IMPLS["s2d"] = _s2d
CONV_IMPLS = tuple(_IMPLS)
