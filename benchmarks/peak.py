"""The machine's ceiling: measured f32 and bf16 GEMM throughput on all cores, and memory bandwidth.

  nice -n 10 .venv/bin/python benchmarks/peak.py [--sizes=2048,4096] [--repeats=5] [--bandwidth-gib=1] [--json]

GEMM: square n x n @ n x n products, 2 n^3 flops each, through XLA:CPU (`jnp.dot` under jit, what the model's
1x1 convolutions and classifier become) and, when torch is installed, PyTorch's CPU matmul (oneDNN / MKL), in the
same run; the best over sizes and libraries is the peak. bf16 inputs accumulate in f32 (the model's bf16 setting).
Bandwidth: numpy copy of a 1 GiB array (STREAM "copy": bytes read + bytes written over the time) and a read-only
sum. Pass the printed GFLOP/s to `python -m regnet_jax.bench --peak-gflops=...` to see a step's fraction of it.
Nothing else may run on the machine meanwhile: the figures are only as quiet as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def _best_seconds(fn, repeats: int) -> float:
  fn()  # warm-up: compilation, page faults, thread start
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def jax_gemm(n: int, dtype: str, repeats: int) -> float:
  import jax
  import jax.numpy as jnp
  dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
  a = jax.random.normal(jax.random.key(0), (n, n), dt)
  b = jax.random.normal(jax.random.key(1), (n, n), dt)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  return 2 * n ** 3 / _best_seconds(lambda: f(a, b).block_until_ready(), repeats) / 1e9


def torch_gemm(n: int, dtype: str, repeats: int) -> float | None:
  try:
    import torch
  except ImportError:
    return None
  dt = torch.bfloat16 if dtype == "bf16" else torch.float32
  a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
  with torch.inference_mode():
    return 2 * n ** 3 / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def bandwidth(repeats: int, gib: float = 1.0) -> dict:
  src = np.ones(int(gib * 2 ** 30) // 8, np.float64)
  dst = np.empty_like(src)
  copy_s = _best_seconds(lambda: np.copyto(dst, src), repeats)
  read_s = _best_seconds(lambda: src.sum(), repeats)
  return {"copy_gb_s": 2 * src.nbytes / copy_s / 1e9, "read_gb_s": src.nbytes / read_s / 1e9}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="benchmarks/peak.py", description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="2048,4096", help="comma-separated square GEMM sizes")
  p.add_argument("--repeats", type=int, default=5, help="timed repeats per size (the best counts)")
  p.add_argument("--bandwidth-gib", type=float, default=1.0, help="array size of the bandwidth test (GiB)")
  p.add_argument("--json", action="store_true")
  a = p.parse_args(argv)
  try:
    sizes = [int(s) for s in a.sizes.split(",")]
  except ValueError:
    print(f"error: --sizes={a.sizes!r} must be comma-separated integers, e.g. 2048,4096", file=sys.stderr)
    return 2
  if a.repeats < 1 or not sizes or min(sizes) < 1 or a.bandwidth_gib <= 0:
    print("error: --repeats and every size must be >= 1, --bandwidth-gib > 0", file=sys.stderr)
    return 2
  result = {"cpus": os.cpu_count(), "gemm": []}
  for dtype in ("f32", "bf16"):
    for n in sizes:
      for lib, fn in (("xla", jax_gemm), ("torch", torch_gemm)):
        gflops = fn(n, dtype, a.repeats)
        if gflops is not None:
          result["gemm"].append({"dtype": dtype, "n": n, "lib": lib, "gflop_s": gflops})
    result[f"peak_{dtype}_gflop_s"] = max(g["gflop_s"] for g in result["gemm"] if g["dtype"] == dtype)
  result.update(bandwidth(a.repeats, a.bandwidth_gib))
  if a.json:
    print(json.dumps(result))
    return 0
  for g in result["gemm"]:
    print(f"GEMM {g['dtype']:4s} n={g['n']:5d} {g['lib']:5s}: {g['gflop_s']:8.1f} GFLOP/s")
  print(f"peak: f32 {result['peak_f32_gflop_s']:.1f} GFLOP/s, bf16 {result['peak_bf16_gflop_s']:.1f} GFLOP/s "
        f"({result['cpus']} cpus) | memory: copy {result['copy_gb_s']:.1f} GB/s, read {result['read_gb_s']:.1f} GB/s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
