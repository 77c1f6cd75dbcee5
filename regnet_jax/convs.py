"""2-D convolution in several numerically-equal formulations, selected by name.

Why: XLA:CPU runs a `feature_group_count` convolution through a slow generic path; its kernel gradient is
pathological (RegNetX32 train step ~10 img/s, see /work/shared/design/performance.md), and its strided data
gradient and 1x1 convolutions are slow too. The formulations here compute the same function with operations XLA:CPU
does well. They all take the same HWIO kernel that `flax.linen.Conv(feature_group_count=groups)` creates, so a
model can switch between them without touching its parameters.

Public impls (`CONV_IMPLS`):
  xla         `lax.conv_general_dilated(feature_group_count=groups)`: the reference.
  split       one dense conv per group, concatenated (cheapest on CPU for grouped stride-1 3x3).
  im2col      k*k strided slices stacked, then one GEMM (per-group batched GEMM when grouped). For k=1 it is
              a plain matmul (strided 1x1 = slice then matmul), the fastest 1x1 conv on CPU by 3-5x.
  shift       sum over the k*k taps of a shifted view times that tap's weights: multiply-adds for depthwise
              (group width 1), a (grouped) matmul per tap otherwise. Best forward for depthwise.
  custom_vjp  a `jax.custom_vjp` whose forward pass, data gradient and kernel gradient are each computed in the
              formulation XLA:CPU does best for the layer's shape (`custom_plan` says which). Not
              forward-mode differentiable (jvp / jacfwd raise); reverse mode (grad, vjp) of first order only.
  onednn      CPU only: oneDNN's direct NHWC convolution, data gradient and kernel gradient called through the XLA
              FFI (regnet_jax/onednn.py; needs the onednn pip packages and a C++ compiler). 2-3x faster than
              the best pure-XLA formulation for 3x3 convs on x86 CPUs. Same differentiation limits as
              custom_vjp. f32 and bf16. Not partitioned: under a multi-device mesh XLA gathers its inputs
              onto every device, so auto uses it on single-device runs only.
  onednn_blocked
              onednn, with the activations of a training step in oneDNN's blocked nChw16c layout between the
              layers, which the native batch norms read and write at no cost (regnet_jax.layers.network_blocked):
              oneDNN's kernels, the grouped ones and their kernel gradient most, are 1.3-5x faster on it than on
              NHWC. Bottleneck AnyNets whose widths are multiples of 16; where only a block's bottleneck width is,
              just its grouped conv uses the layout; elsewhere (bn_impl xla, eval mode) it is onednn. `auto`
              on one CPU in float32 (in bf16 auto keeps NHWC: measured faster, see layers._blocked_ok).
  auto        resolved per platform, layer shape and dtype by `resolve_impl`.

Private building blocks, used by `custom_vjp` plans (and tested like the public ones):
  polyphase   a stride-s conv as the sum of s*s stride-1 convs, one per input phase (x[a::s, b::s]) with the
              sub-kernel w[a::s, b::s]. Its transpose (the data gradient) avoids XLA's slow lhs-dilated conv.
  blockdiag   one dense conv with a block-diagonal (Cin, Cout) kernel; its kernel gradient is one dense
              gradient (groups x the flops) whose diagonal blocks are kept. Wins for 2 groups at large spatial.

Precision: f32 inputs compute in f32 (CPU dots and convs are full f32 unless a caller lowers
`jax_default_matmul_precision`). bf16/f16 inputs accumulate in f32 (`preferred_element_type`) and the result is
cast to x.dtype once, so sums over taps/phases are not rounded term by term.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from regnet_jax import conv_autotune, onednn

_DN = ("NHWC", "HWIO", "NHWC")
_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _geometry(x, kernel, stride, groups):
  """Validates shapes; returns (n, h, w, cin, k, cin_g, cout, ho, wo)."""
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f"expected x NHWC and kernel HWIO, got shapes {x.shape} and {kernel.shape}")
  n, h, w, cin = x.shape
  k, k2, cin_g, cout = kernel.shape
  if k != k2 or k % 2 == 0:
    raise ValueError(f"kernel must be square with an odd size, got spatial shape {kernel.shape[:2]}")
  if not isinstance(stride, int) or stride < 1:
    raise ValueError(f"stride must be a positive int, got {stride!r}")
  if (not isinstance(groups, int) or groups < 1 or cin % groups or cout % groups
      or cin // groups != cin_g):
    raise ValueError(f"groups={groups!r} does not fit x channels {cin} and kernel shape {kernel.shape} "
                     f"(need Cin % groups == 0, Cout % groups == 0, kernel in-channels == Cin // groups)")
  ho = (h - 1) // stride + 1
  wo = (w - 1) // stride + 1
  return n, h, w, cin, k, cin_g, cout, ho, wo


def _acc_dtype(dtype):
  """Accumulation dtype for dots/convs: f32 for 16-bit floats, None (= the input dtype) otherwise."""
  return jnp.float32 if jnp.dtype(dtype) in _LOW_PRECISION else None


def _conv(x, kernel, stride, padding, groups=1):
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, dimension_numbers=_DN, feature_group_count=groups,
      preferred_element_type=_acc_dtype(x.dtype))


def _sym_pad(k):
  p = (k - 1) // 2
  return ((p, p), (p, p))


# --------------------------------------------------------------------------------------------------------------
# Formulations. Each: f(x, kernel, stride, groups) -> y in the accumulation dtype (cast by the caller).

def _xla(x, kernel, stride, groups):
  return _conv(x, kernel, stride, _sym_pad(kernel.shape[0]), groups)


def _split(x, kernel, stride, groups):
  if groups == 1:
    return _xla(x, kernel, stride, 1)
  pad = _sym_pad(kernel.shape[0])
  xs = jnp.split(x, groups, axis=-1)
  ks = jnp.split(kernel, groups, axis=-1)
  return jnp.concatenate([_conv(a, b, stride, pad) for a, b in zip(xs, ks)], axis=-1)


def _taps(x, k, stride, ho, wo):
  """The k*k views x_pad[i::stride, j::stride] (row-major over (i, j)), each (N, Ho, Wo, C)."""
  p = (k - 1) // 2
  if p:
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  n, _, _, c = x.shape
  return [lax.slice(x, (0, i, j, 0), (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                    (1, stride, stride, 1))
          for i in range(k) for j in range(k)]


def _im2col(x, kernel, stride, groups):
  n, _, _, _, k, cin_g, cout, ho, wo = _geometry(x, kernel, stride, groups)
  taps = _taps(x, k, stride, ho, wo)
  t = k * k
  acc = _acc_dtype(x.dtype)
  patches = taps[0] if t == 1 else jnp.stack(taps, axis=-2)  # (N, Ho, Wo, [T,] Cin), T-major
  if groups == 1:
    y = lax.dot_general(patches.reshape(n * ho * wo, t * cin_g), kernel.reshape(t * cin_g, cout),
                        (((1,), (0,)), ((), ())), preferred_element_type=acc)
  else:
    cout_g = cout // groups
    y = jnp.einsum("mtgc,tcgo->mgo", patches.reshape(n * ho * wo, t, groups, cin_g),
                   kernel.reshape(t, cin_g, groups, cout_g), preferred_element_type=acc)
  return y.reshape(n, ho, wo, cout)


def _shift(x, kernel, stride, groups):
  n, _, _, _, k, cin_g, cout, ho, wo = _geometry(x, kernel, stride, groups)
  cout_g = cout // groups
  acc_dt = _acc_dtype(x.dtype) or x.dtype
  kt = kernel.reshape(k * k, cin_g, cout)
  y = None
  for t, xt in enumerate(_taps(x, k, stride, ho, wo)):
    if cin_g == 1:  # depthwise, channel multiplier cout_g: elementwise multiply-add
      xr = jnp.repeat(xt, cout_g, axis=-1) if cout_g > 1 else xt
      term = xr.astype(acc_dt) * kt[t, 0].astype(acc_dt)
    elif groups == 1:
      term = jnp.einsum("nhwc,co->nhwo", xt, kt[t], preferred_element_type=acc_dt)
    else:
      term = jnp.einsum("nhwgc,cgo->nhwgo", xt.reshape(n, ho, wo, groups, cin_g),
                        kt[t].reshape(cin_g, groups, cout_g),
                        preferred_element_type=acc_dt).reshape(n, ho, wo, cout)
    y = term if y is None else y + term
  return y


def _blockdiag(x, kernel, stride, groups):
  if groups == 1:
    return _xla(x, kernel, stride, 1)
  k, _, cin_g, cout = kernel.shape
  eye = jnp.eye(groups, dtype=kernel.dtype)
  dense = jnp.einsum("abcgo,hg->abhcgo", kernel.reshape(k, k, cin_g, groups, cout // groups), eye)
  return _xla(x, dense.reshape(k, k, groups * cin_g, cout), stride, 1)


def _polyphase(x, kernel, stride, groups):
  if stride == 1:
    return _split(x, kernel, 1, groups)
  n, h, w, cin, k, _, _, ho, wo = _geometry(x, kernel, stride, groups)
  s, p = stride, (k - 1) // 2
  # Output row r reads padded rows s*r + i, i < k; phase a holds rows a, a+s, ...; it needs ho + (k-1-a)//s rows.
  hp, wp = s * (ho + (k - 1) // s), s * (wo + (k - 1) // s)
  xp = jnp.pad(x, ((0, 0), (p, max(hp - h - p, 0)), (p, max(wp - w - p, 0)), (0, 0)))
  y = None
  for a in range(min(s, k)):
    ka = len(range(a, k, s))
    for b in range(min(s, k)):
      kb = len(range(b, k, s))
      phase = lax.slice(xp, (0, a, b, 0), (n, a + s * (ho + ka - 2) + 1, b + s * (wo + kb - 2) + 1, cin),
                        (1, s, s, 1))  # (N, ho + ka - 1, wo + kb - 1, Cin)
      term = _split_valid(phase, kernel[a::s, b::s], groups)
      y = term if y is None else y + term
  return y


def _split_valid(x, kernel, groups):
  if groups == 1:
    return _conv(x, kernel, 1, "VALID")
  xs = jnp.split(x, groups, axis=-1)
  ks = jnp.split(kernel, groups, axis=-1)
  return jnp.concatenate([_conv(a, b, 1, "VALID") for a, b in zip(xs, ks)], axis=-1)


_FORMULATIONS: dict[str, Callable] = {
    "xla": _xla,
    "split": _split,
    "im2col": _im2col,
    "shift": _shift,
    "polyphase": _polyphase,
    "blockdiag": _blockdiag,
}


# --------------------------------------------------------------------------------------------------------------
# custom_vjp: forward, data gradient and kernel gradient each in its own formulation.

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _planned(x, kernel, stride, groups, plan):
  return _FORMULATIONS[plan[0]](x, kernel, stride, groups).astype(x.dtype)


def _planned_fwd(x, kernel, stride, groups, plan):
  return _planned(x, kernel, stride, groups, plan), (x, kernel)


def _planned_bwd(stride, groups, plan, res, dy):
  x, kernel = res
  dx_form, dw_form = _FORMULATIONS[plan[1]], _FORMULATIONS[plan[2]]
  # Each formulation is linear in x (kernel fixed) and in kernel (x fixed): transpose that linear map.
  dx, = jax.linear_transpose(lambda a: dx_form(a, kernel, stride, groups).astype(x.dtype), x)(dy)
  dw, = jax.linear_transpose(lambda b: dw_form(x, b, stride, groups).astype(x.dtype), kernel)(dy)
  return dx, dw


_planned.defvjp(_planned_fwd, _planned_bwd)


_STEM_MAX_CIN = 4  # dense convs with at most this many input channels (RGB / gray stems) are GEMMs over patches


def custom_plan(*, k, stride, groups, cin, cout, spatial, backend=None):
  """(forward, data-gradient, kernel-gradient) formulations that impl="custom_vjp" uses for a layer shape.

  Chosen from CPU measurements (benchmarks/conv_microbench.py); the same plan is used on any backend when
  custom_vjp is asked for explicitly (auto does not pick custom_vjp off CPU).
  """
  del cout, spatial, backend
  cin_g = cin // groups
  if k == 1 or (groups == 1 and cin <= _STEM_MAX_CIN):
    return ("im2col", "im2col", "im2col")  # matmuls (GEMM over k*k*Cin <= 36 patches for a stem)
  if groups == 1:
    # Dense: XLA's dense conv and its gradients are fine at stride 1; at stride 2 its data gradient is an
    # lhs-dilated conv (slow), the transpose of the polyphase form is 4 stride-1 convs.
    return ("xla", "xla" if stride == 1 else "polyphase", "xla")
  if cin_g == 1:
    # Depthwise: multiply-adds forward, col2im of a broadcast multiply for dx, per-channel convs for dw.
    return ("shift", "im2col", "split")
  # Grouped: per-group dense convs; at stride > 1 the polyphase transpose for dx, and with 2 groups one
  # dense kernel gradient (2x the flops, no channel split of x) beats two.
  if stride == 1:
    return ("split", "split", "split")
  return ("split", "polyphase", "blockdiag" if groups <= 2 else "split")


def _custom_vjp(x, kernel, stride, groups):
  plan = custom_plan(k=kernel.shape[0], stride=stride, groups=groups, cin=x.shape[-1], cout=kernel.shape[-1],
                     spatial=x.shape[1:3])
  return _planned(x, kernel, stride, groups, plan)


_PUBLIC: dict[str, Callable] = {
    "xla": _xla,
    "split": _split,
    "im2col": _im2col,
    "shift": _shift,
    "custom_vjp": _custom_vjp,
    "onednn": onednn.conv2d,
    "onednn_blocked": onednn.conv2d,  # the layout switch is the block's (blocked_layout); a lone conv is onednn
}
CONV_IMPLS: tuple[str, ...] = tuple(_PUBLIC)


# --------------------------------------------------------------------------------------------------------------

def resolve_impl(impl: str, *, k, stride, groups, cin, cout, spatial, backend=None, dtype=jnp.float32,
                 batch: int | None = None) -> str:
  """The concrete impl that `impl` means for this layer; "auto" picks per platform, shape and dtype.

  spatial: input height (int) or (height, width); backend: defaults to jax.default_backend(); batch: the layer's
  batch, which on GPU lets "auto" time the grouped candidates (regnet_jax/conv_autotune.py); without it, xla.
  """
  backend = backend or jax.default_backend()
  if impl in ("onednn", "onednn_blocked") and backend != "cpu":
    raise ValueError(f'conv_impl="{impl}" runs on the CPU only, this computation is on {backend!r}; use '
                     '"auto" (or xla / split) there')
  if impl in _PUBLIC:
    return impl
  if impl != "auto":
    raise ValueError(f"unknown conv impl {impl!r}; known: {', '.join(CONV_IMPLS + ('auto',))}")
  cin_g = cin // groups
  if backend == "cpu":
    # oneDNN for every conv where it can be had. Train steps, idle 2-core machine, same run (README
    # "Performance"): RegNetX32 b128 all-oneDNN 462 img/s vs oneDNN 3x3 + matmul 1x1/stem 434 vs the best pure-XLA
    # plan (custom_vjp) 317; regnetx_400mf b32 67.4 vs 66.3 vs 52.9. Timed per layer (under load) a 1x1 conv as a
    # matmul was 1.1-1.9x faster than oneDNN's, yet the whole step is faster all-oneDNN; why was not isolated.
    # Only on a single device: XLA's partitioner knows nothing of the FFI call and would gather a batch-sharded
    # input onto every device (correct, but each device then convolves the global batch).
    if jax.device_count() == 1 and onednn.fast(dtype):  # bf16 only where the CPU has it (onednn.probe)
      h, w = (spatial, spatial) if isinstance(spatial, int) else spatial
      if onednn.layer_fast(dtype, k=k, stride=stride, groups=groups, cin=cin, cout=cout, h=h, w=w,
                           batch=batch or 2):
        return "onednn"
      # oneDNN has only reference loops for this layer here (100-300x slower): the XLA plans below.
    # From benchmarks/conv_microbench.py on a shared 2-core CPU (f32; ratios = time / xla, same run):
    #   1x1 convs (any stride): im2col = matmul 0.12-0.6 (split/xla ~1.0).
    #   dense 3x3 stem, Cin 1 or 3, stride 2: im2col 0.5-0.9.
    #   dense 3x3 64->64 (not in RegNet): xla best at stride 1 (im2col ~2x slower); at stride 2 the
    #     custom plan (xla fwd, polyphase dx, xla dw) 0.67.
    #   grouped 3x3 stride 1: split 0.01-0.09 (im2col/shift 0.1-0.4); custom_vjp plan = split.
    #   grouped 3x3 stride 2, 2 groups at 48/112 px: custom_vjp 0.16-0.19 vs split 0.27-0.33 (0.5-0.6 of split).
    #   grouped 3x3 stride 2, 4-24 groups: custom_vjp (polyphase dx) = split within noise -> split (simpler).
    #   depthwise 3x3 (not in RegNet X): custom (shift fwd, im2col dx, split dw) 0.3-0.5 of shift alone.
    #   conv-only RegNetX32 / regnetx_400mf nets, value_and_grad: auto and custom_vjp tie (run-to-run spread
    #   larger than their difference), uniform split ~1.8x and uniform im2col ~2-2.3x slower, xla ~12x slower.
    if k == 1 or (groups == 1 and cin <= _STEM_MAX_CIN):
      return "im2col"
    if groups > 1 and cin_g > 1 and (stride == 1 or groups > 2):
      return "split"
    if groups == 1 and stride == 1:
      return "xla"
    return "custom_vjp"  # strided dense, depthwise, strided 2-group
  # GPU: vendor convs (cuDNN) are good for dense and 1x1 convs, so xla there. Grouped convs' backward pass is slow
  # on CUDA (jax#13800, jax#26266), so a dense cuDNN conv per group (split) can win, by an amount no rule fitted
  # here could know (no accelerator): they are timed on the device, once per layer shape, and xla is kept unless
  # a candidate is >= 5% faster (conv_autotune). TPU: XLA lowers grouped convs itself; xla.
  if backend in ("gpu", "cuda", "rocm") and groups > 1 and batch is not None:
    h, w = (spatial, spatial) if isinstance(spatial, int) else spatial
    return conv_autotune.choose(conv_autotune.ConvShape(k=k, stride=stride, groups=groups, cin=cin, cout=cout,
                                                        h=h, w=w, batch=batch, dtype=jnp.dtype(dtype).name))
  return "xla"


def blocked_layout(impl: str, *, channels, group_widths=(), dtype=jnp.float32) -> bool:
  """Whether convs of these channel counts (and grouped convs of these channels per group) may exchange oneDNN's
  blocked layout (see `onednn_blocked`): asked for (onednn_blocked, or auto where auto means oneDNN) and every
  count a multiple of onednn.BLOCK. A group that splits a block has no blocked oneDNN kernel: oneDNN falls back
  to its reference code (regnety_32gf's groups of 232 channels: minutes for one batch-2 step)."""
  if impl not in ("auto", "onednn_blocked") or any(c % onednn.BLOCK for c in (*channels, *group_widths)):
    return False
  if impl == "auto" and not onednn.fast(dtype, blocked=True):
    return False  # without AVX-512 oneDNN has no nChw16c kernels, only reference loops (onednn.probe)
  return resolve_impl(impl, k=3, stride=1, groups=1, cin=onednn.BLOCK, cout=onednn.BLOCK, spatial=8,
                      dtype=dtype) in ("onednn", "onednn_blocked")


def conv2d(x, kernel, *, stride: int = 1, groups: int = 1, impl: str = "xla"):
  """2-D convolution, NHWC input, HWIO kernel (k, k, Cin // groups, Cout), symmetric padding (k-1)//2.

  Output (N, (H-1)//stride+1, (W-1)//stride+1, Cout) in x.dtype. impl: one of CONV_IMPLS or "auto".
  """
  n, h, w, cin, k, _, cout, _, _ = _geometry(x, kernel, stride, groups)
  name = resolve_impl(impl, k=k, stride=stride, groups=groups, cin=cin, cout=cout, spatial=(h, w), dtype=x.dtype,
                      batch=n)
  if name == "custom_vjp":
    return _custom_vjp(x, kernel, stride, groups)
  return _PUBLIC[name](x, kernel, stride, groups).astype(x.dtype)
