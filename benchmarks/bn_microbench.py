"""Times the native batch-norm kernels alone (regnet_jax/csrc/batchnorm_cpu.cc): forward and backward, f32 and bf16.

  python benchmarks/bn_microbench.py [--rows=73728] [--channels=64] [--hw=576] [--repeats=30]

Each kernel runs as one jitted `ffi_call` on (1, rows, channels) activations in NHWC (rows = batch x H x W, hw =
H x W), with ReLU, no residual; prints the median milliseconds and the effective bandwidth (bytes the kernel must
move: forward reads x twice and writes y, backward reads x and dy twice and writes dx). The default shape is a
regnetx32 stage at batch 128: 128 x 24 x 24 pixels, 64 channels.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from regnet_jax import batchnorm_cpu, onednn


def _median_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times)) * 1e3


def measure(dtype, rows: int, channels: int, hw: int, repeats: int) -> dict:
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, rows, channels)), dtype)
  dy = (x * 0.3).astype(dtype)
  scale, bias = jnp.ones(channels), jnp.zeros(channels)
  layout = (False, False, hw)
  fwd = jax.jit(lambda x, s, b: batchnorm_cpu._forward(x, s, b, None, 1e-5, True, layout))
  _, mean, var = fwd(x, scale, bias)
  out = [jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((channels,), jnp.float32),
         jax.ShapeDtypeStruct((channels,), jnp.float32)]
  call = jax.ffi.ffi_call(batchnorm_cpu._target("RegnetBnBwd"), out, vmap_method="sequential")
  bwd = jax.jit(lambda x, dy, m, v, s, b: call(x, dy, m, v, s, b, eps=np.float32(1e-5), relu=True,
                                                **batchnorm_cpu._layout_attrs(layout)))
  fwd_ms = _median_ms(fwd, (x, scale, bias), repeats)
  bwd_ms = _median_ms(bwd, (x, dy, mean[0], var[0], scale, bias), repeats)
  n = x.nbytes
  return {"dtype": jnp.dtype(dtype).name, "rows": rows, "channels": channels, "fwd_ms": fwd_ms, "bwd_ms": bwd_ms,
          "fwd_gb_s": 3 * n / fwd_ms / 1e6, "bwd_gb_s": 5 * n / bwd_ms / 1e6}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python benchmarks/bn_microbench.py", description=__doc__.split("\n")[0])
  p.add_argument("--rows", type=int, default=128 * 24 * 24)
  p.add_argument("--channels", type=int, default=64)
  p.add_argument("--hw", type=int, default=24 * 24)
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--json", action="store_true")
  a = p.parse_args(argv)
  if not onednn.available():
    raise SystemExit(f"the native batch norm is unavailable: {onednn.unavailable_reason()}")
  for dtype in (jnp.float32, jnp.bfloat16):
    r = measure(dtype, a.rows, a.channels, a.hw, a.repeats)
    print(json.dumps(r) if a.json else f"{r['dtype']:9s} fwd {r['fwd_ms']:7.2f} ms ({r['fwd_gb_s']:5.1f} GB/s)  "
          f"bwd {r['bwd_ms']:7.2f} ms ({r['bwd_gb_s']:5.1f} GB/s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
