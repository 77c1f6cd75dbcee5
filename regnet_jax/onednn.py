"""oneDNN convolutions on XLA:CPU through the XLA FFI: `conv_impl="onednn"`.

Why: XLA:CPU runs grouped and strided 3x3 convolutions and their gradients at a fraction of what the CPU can do
(see regnet_jax/convs.py); oneDNN, the library behind PyTorch's CPU convolutions, has direct NHWC kernels for the
forward pass, the data gradient and the kernel gradient. regnet_jax/csrc/conv_onednn.cc wraps the three as XLA
FFI handlers; this module compiles it, together with the fused batch-norm kernels of regnet_jax/csrc/batchnorm_cpu.cc
(used by regnet_jax/batchnorm_cpu.py), once per (sources, oneDNN, jaxlib, compiler, CPU) into a cache directory,
registers the handlers and exposes `conv2d` with a `jax.custom_vjp` whose backward pass calls the two gradient
kernels, and, for inference, `conv2d_bn_act`: a conv with bias, residual add and ReLU as oneDNN post-ops, into
which regnet_jax/layers.py folds each batch norm. Built with -O3 -march=native (hence the CPU in the cache key) and -fopenmp (libgomp, oneDNN's runtime).

oneDNN comes from PyPI (`onednn-cpu-gomp` for libdnnl.so, `onednn-devel-cpu-gomp` for its headers; x86-64 Linux),
the build needs a C++17 compiler (`$CXX`, default g++). Where either is missing `available()` is False, `auto`
keeps the pure-XLA formulations and asking for "onednn" explicitly raises OneDnnUnavailable saying what is
missing. Prebuild with `python -m regnet_jax.onednn` (scripts/setup.sh does) so the first training run does not
pay the ~10 s compile. The cache lives in $REGNET_JAX_CACHE, else $XDG_CACHE_HOME/regnet_jax, else
~/.cache/regnet_jax.

Numerics: f32 in, f32 accumulation (oneDNN's default strict fp-math mode); bf16 in, f32 accumulation, bf16 out.
The summation order differs from XLA's, so results agree with conv_impl="xla" to float rounding (~1e-6 relative),
not bit for bit. Threads: OpenMP (libgomp), OMP_NUM_THREADS if set, else all cores.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from regnet_jax import runtime

# One library: the oneDNN convolutions and the fused batch norm (regnet_jax/batchnorm_cpu.py) beside them.
SOURCES = (Path(__file__).parent / "csrc" / "conv_onednn.cc", Path(__file__).parent / "csrc" / "batchnorm_cpu.cc")
_TARGETS = {"fwd": "RegnetConvFwd", "bwd_data": "RegnetConvBwdData", "bwd_weights": "RegnetConvBwdWeights"}
INFER_TARGETS = ("RegnetConvInfer", "RegnetConvInferResidual")
BN_TARGETS = ("RegnetBnFwd", "RegnetBnFwdResidual", "RegnetBnBwd", "RegnetBnBwdResidual", "RegnetBnBwd2",
              "RegnetBnBwdResidual2")
_FFI_PREFIX = "regnet_jax_onednn_"
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


class OneDnnUnavailable(RuntimeError):
  """conv_impl="onednn" was asked for where the oneDNN extension cannot be built or loaded."""


def _dist_file(dist: str, suffix: str) -> Path:
  """The installed file of distribution `dist` whose path ends with `suffix`."""
  try:
    files = importlib.metadata.files(dist) or []
  except importlib.metadata.PackageNotFoundError:
    raise OneDnnUnavailable(
        f"the Python package {dist!r} is not installed; install it with `pip install {dist}` (x86-64 Linux "
        "only), or use another conv_impl (auto, custom_vjp, split, im2col, xla)") from None
  for f in files:
    if ("/" + str(f).replace(os.sep, "/")).endswith(suffix):
      return Path(f.locate()).resolve()
  raise OneDnnUnavailable(f"package {dist!r} is installed but has no file ending in {suffix!r}; reinstall it")


def onednn_paths() -> tuple[Path, Path]:
  """(include directory, library directory) of the pip-installed oneDNN."""
  lib = _dist_file("onednn-cpu-gomp", "/libdnnl.so")
  header = _dist_file("onednn-devel-cpu-gomp", "/oneapi/dnnl/dnnl.hpp")
  return header.parents[2], lib.parent


def cache_dir() -> Path:
  return Path(runtime.cache_root())


def build(*, verbose: bool = False) -> Path:
  """Compiles the extension (once per source/oneDNN/jaxlib/compiler/CPU) and returns the shared library's path."""
  if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
    raise OneDnnUnavailable(f"the oneDNN extension is built for x86-64 Linux only, not {sys.platform}/"
                            f"{platform.machine()}; use another conv_impl (auto picks one)")
  include, libdir = onednn_paths()
  cxx = os.environ.get("CXX", "g++")
  if shutil.which(cxx) is None:
    raise OneDnnUnavailable(f"no C++ compiler {cxx!r} on PATH to build the oneDNN extension; install g++ "
                            "(e.g. `apt-get install g++`) or set CXX, or use another conv_impl")
  jax_include = jax.ffi.include_dir()
  key = hashlib.sha256()
  for part in (*(src.read_bytes() for src in SOURCES), runtime.cpu_description().encode(), str(libdir).encode(),
               str(include).encode(), jax_include.encode(), jax.__version__.encode(), cxx.encode()):
    key.update(part)
  out = cache_dir() / f"onednn-{key.hexdigest()[:16]}" / "libregnet_onednn.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Compile to a temporary name and rename: concurrent builders (several processes of one run) never load a
  # half-written library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  # -fopenmp: the batch norm kernels share libgomp's thread pool with oneDNN (the cpu-gomp build).
  cmd = [cxx, "-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC", *map(str, SOURCES),
         f"-I{jax_include}", f"-I{include}", f"-L{libdir}", "-ldnnl", f"-Wl,-rpath,{libdir}", "-o", tmp]
  if verbose:
    print(" ".join(cmd), file=sys.stderr)
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    os.unlink(tmp)
    raise OneDnnUnavailable(f"building the oneDNN extension failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
  os.replace(tmp, out)
  return out


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
  """(library, None) once built and registered with XLA, or (None, why not)."""
  try:
    lib = ctypes.cdll.LoadLibrary(str(build()))
  except (OneDnnUnavailable, OSError) as e:
    why = str(e) if isinstance(e, OneDnnUnavailable) else f"building or loading the oneDNN extension failed: {e}"
    # Said once per process: without it conv_impl=auto silently runs the 2-3x slower pure-XLA convolutions.
    logging.getLogger(__name__).warning("oneDNN convolutions unavailable, conv_impl=auto uses XLA's: %s", why)
    return None, why
  for symbol in (*_TARGETS.values(), *INFER_TARGETS, *BN_TARGETS):
    jax.ffi.register_ffi_target(_FFI_PREFIX + symbol, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  lib.RegnetOnednnVersion.restype = ctypes.c_char_p
  lib.RegnetOnednnProbe.argtypes = [ctypes.c_int, ctypes.c_int]
  lib.RegnetOnednnLayerIsRef.argtypes = [ctypes.c_int, ctypes.c_int] + [ctypes.c_int64] * 8
  return lib, None


NO_KERNELS, REFERENCE_ONLY, OPTIMISED = 0, 1, 2  # what `probe` returns (see RegnetOnednnProbe)


@functools.cache
def probe(dtype, blocked: bool = False) -> int:
  """What this CPU's oneDNN has for convolutions of `dtype` in NHWC (or, blocked, nChw16c): NO_KERNELS (also
  without the extension), REFERENCE_ONLY for some RegNet layers, or OPTIMISED throughout.

  float32 NHWC is OPTIMISED on any x86-64 with AVX2. bfloat16 needs AVX-512 (or AVX2-VNNI-2): elsewhere oneDNN
  creates no primitive, so this must be known before a call is traced, not when XLA runs it. nChw16c has optimised
  kernels only with AVX-512 (AVX2's block 8 channels): elsewhere oneDNN runs reference loops, ~100x slower.
  """
  lib, _ = _load()
  dtype = jnp.dtype(dtype)
  if lib is None or dtype not in DTYPES:
    return NO_KERNELS
  return lib.RegnetOnednnProbe(DTYPES.index(dtype), int(blocked))


def supports(dtype) -> bool:
  """Whether conv_impl="onednn" runs convolutions of this dtype here at all."""
  return available() and probe(dtype) != NO_KERNELS


def fast(dtype, blocked: bool = False) -> bool:
  """Whether oneDNN has optimised kernels for this dtype and layout here: what conv_impl="auto" requires."""
  return available() and probe(dtype, blocked) == OPTIMISED


@functools.cache
def layer_fast(dtype, *, k: int, stride: int, groups: int, cin: int, cout: int, h: int, w: int, batch: int = 2,
               blocked: bool = False) -> bool:
  """Whether oneDNN has optimised kernels for this one layer in every direction a network may run it (training
  forward, both gradients, inference forward with its post-ops). `fast` probes typical RegNet layers; some
  layers have only reference loops even so (on an AVX2-only AMD EPYC: grouped 3x3 convs of 2 or 4 channels per
  group, where a sweep trial trained at 3.8 img/s instead of ~1000), so conv_impl="auto" asks per layer."""
  lib, _ = _load()
  dtype = jnp.dtype(dtype)
  if lib is None or dtype not in DTYPES:
    return False
  return lib.RegnetOnednnLayerIsRef(DTYPES.index(dtype), int(blocked), batch, h, w, cin, cout, k, stride,
                                    groups) == 0


def available() -> bool:
  """True when the extension is built (building it now if needed) and registered."""
  return _load()[0] is not None


def unavailable_reason() -> str | None:
  return _load()[1]


def version() -> str:
  lib, why = _load()
  if lib is None:
    raise OneDnnUnavailable(why)
  return lib.RegnetOnednnVersion().decode()


BLOCK = 16  # channels per block of the blocked activation layout (oneDNN's nChw16c)


def to_blocked(x):
  """NHWC (N, H, W, C) -> oneDNN's nChw16c as an array (N, C // 16, H, W, 16); C must be a multiple of 16."""
  n, h, w, c = x.shape
  if c % BLOCK:
    raise ValueError(f"the blocked layout needs channels divisible by {BLOCK}, got {c}")
  return x.reshape(n, h, w, c // BLOCK, BLOCK).transpose(0, 3, 1, 2, 4)


def from_blocked(x):
  """(N, C // 16, H, W, 16) -> NHWC (N, H, W, C); the inverse of to_blocked."""
  n, cb, h, w, b = x.shape
  return x.transpose(0, 2, 3, 1, 4).reshape(n, h, w, cb * b)


def _call(kind, shape, dtype, a, b, stride, groups, blocked):
  return jax.ffi.ffi_call(_FFI_PREFIX + _TARGETS[kind], jax.ShapeDtypeStruct(shape, dtype),
                          vmap_method="sequential")(a, b, stride=np.int64(stride), groups=np.int64(groups),
                                                    blocked=bool(blocked))


def _out_shape(x_shape, cout, stride, blocked):
  if blocked:
    n, _, h, w, _ = x_shape
    return (n, cout // BLOCK, (h - 1) // stride + 1, (w - 1) // stride + 1, BLOCK)
  n, h, w, _ = x_shape
  return (n, (h - 1) // stride + 1, (w - 1) // stride + 1, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, stride, groups, blocked):
  return _call("fwd", _out_shape(x.shape, kernel.shape[-1], stride, blocked), x.dtype, x, kernel, stride, groups,
               blocked)


def _conv_fwd(x, kernel, stride, groups, blocked):
  return _conv(x, kernel, stride, groups, blocked), (x, kernel)


def _conv_bwd(stride, groups, blocked, res, dy):
  x, kernel = res
  dy = dy.astype(x.dtype)
  return (_call("bwd_data", x.shape, x.dtype, dy, kernel, stride, groups, blocked),
          _call("bwd_weights", kernel.shape, kernel.dtype, x, dy, stride, groups, blocked))


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x, kernel, stride: int, groups: int, *, blocked: bool = False):
  """NHWC x, HWIO kernel (k, k, Cin // groups, Cout), symmetric padding (k-1)//2, like regnet_jax.convs.conv2d.

  blocked=True: x and the result in oneDNN's nChw16c layout, arrays (N, C // 16, H, W, 16) (`to_blocked`), where
  oneDNN's grouped convolutions run 1.5-5x faster than on NHWC (their kernel gradient most; README
  "Performance"); batch_norm_act in regnet_jax.batchnorm_cpu reads and writes that layout, so a network keeps it
  between a BN and the grouped conv after it at no cost. Channels must be multiples of 16.

  Reverse-mode differentiable (first order). Raises OneDnnUnavailable where the extension cannot be had or
  this CPU's oneDNN lacks the dtype (`probe`), and ValueError for dtypes other than float32 / bfloat16 or mixed
  dtypes.
  """
  lib, why = _load()
  if lib is None:
    raise OneDnnUnavailable(f'conv_impl="onednn" is unavailable: {why}')
  if jnp.dtype(x.dtype) not in DTYPES or x.dtype != kernel.dtype:
    raise ValueError(f'conv_impl="onednn" takes float32 or bfloat16 inputs of one dtype, got x {x.dtype} and '
                     f'kernel {kernel.dtype}; use conv_impl="auto" for other dtypes')
  if probe(x.dtype, blocked) == NO_KERNELS:
    raise OneDnnUnavailable(f'conv_impl="onednn" has no {jnp.dtype(x.dtype).name} convolutions on this CPU (oneDNN '
                            f'runs bfloat16 only with AVX-512 or AVX2-VNNI-2); use conv_impl="auto", which picks '
                            f'XLA\'s convolutions for it here, or float32')
  cin = x.shape[1] * x.shape[4] if blocked else x.shape[-1]
  if blocked and (x.ndim != 5 or x.shape[4] != BLOCK or kernel.shape[-1] % BLOCK):
    raise ValueError(f"blocked conv: x must be (N, C // {BLOCK}, H, W, {BLOCK}) and Cout a multiple of {BLOCK}, "
                     f"got x {x.shape}, kernel {kernel.shape}")
  if kernel.shape[2] * groups != cin:
    raise ValueError(f"conv: kernel {kernel.shape} with groups={groups} does not take {cin} input channels")
  return _conv(x, kernel, stride, groups, blocked)


def conv2d_bn_act(x, kernel, bias, residual=None, *, stride: int, groups: int, relu: bool):
  """Inference: relu?(conv(x, kernel) + bias + residual?) in one oneDNN call, NHWC, forward only.

  For a conv followed by an inference batch norm, pass the kernel with the BN's per-channel multiplier folded in
  (kernel * scale / sqrt(var + eps), in x.dtype) and bias = BN bias - mean * that multiplier (float32, Cout):
  the add and ReLU become oneDNN post-ops, accumulated in f32 and rounded once, so y is written in one pass
  instead of the conv's pass plus one for BN + add + ReLU. `residual`: like the output, x.dtype.
  Not differentiable (training keeps conv and BN apart: it needs the batch statistics).
  """
  lib, why = _load()
  if lib is None:
    raise OneDnnUnavailable(f'conv_impl="onednn" is unavailable: {why}')
  if jnp.dtype(x.dtype) not in DTYPES or x.dtype != kernel.dtype or x.ndim != 4:
    raise ValueError(f"conv2d_bn_act takes NHWC float32 or bfloat16 x and a kernel of the same dtype, got x "
                     f"{x.dtype}{x.shape} and kernel {kernel.dtype}")
  if kernel.shape[2] * groups != x.shape[-1] or bias.shape != (kernel.shape[-1],):
    raise ValueError(f"conv2d_bn_act: kernel {kernel.shape} with groups={groups} and bias {bias.shape} do not "
                     f"fit {x.shape[-1]} input channels")
  shape = _out_shape(x.shape, kernel.shape[-1], stride, False)
  if residual is not None and residual.shape != shape:
    raise ValueError(f"conv2d_bn_act: residual {residual.shape} is not the output's shape {shape}")
  args = (x, kernel, bias.astype(jnp.float32)) + (() if residual is None else (residual.astype(x.dtype),))
  target = INFER_TARGETS[residual is not None]
  return jax.ffi.ffi_call(_FFI_PREFIX + target, jax.ShapeDtypeStruct(shape, x.dtype), vmap_method="sequential")(
      *args, stride=np.int64(stride), groups=np.int64(groups), relu=bool(relu))


def main() -> int:
  """Builds (or finds) the extension and reports where it is: `python -m regnet_jax.onednn`."""
  try:
    path = build(verbose=True)
    print(f"oneDNN extension: {path} (oneDNN {version()})")
    return 0
  except OneDnnUnavailable as e:
    print(f"oneDNN extension unavailable: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
