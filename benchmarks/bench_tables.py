"""The README Performance tables from one run of benchmarks/run_bench.sh: markdown on stdout.

  python benchmarks/bench_tables.py docs/bench/DATE_run_bench.jsonl

Train and eval rows per model: img/s in f32 and bf16, achieved GFLOP/s as a fraction of the measured peak (the
run's first line, benchmarks/peak.py), PyTorch's img/s in the same run (each round under its faster
environment) and the ratio with its per-round values; then peak RSS, and compile seconds.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def allocator(r: dict) -> str:
  """The allocator a row ran under (regnet_jax/runtime.py), from what bench records of its environment."""
  if "libregnet_block_cache" in r.get("ld_preload", ""):
    return "blocks"
  return "retain" if "mmap_max" in r.get("glibc_tunables", "") else "system"


def _cell(r: dict | None, peak: dict) -> str:
  if r is None:
    return ""
  key = "peak_bf16_gflop_s" if r["half_precision"] else "peak_f32_gflop_s"
  frac = f" ({100 * r['gflop_s'] / peak[key]:.0f}%)" if key in peak else ""
  return f"{r['img_per_s']:.1f}{frac}"


def _torch(r: dict | None) -> str:
  if r is None or "torch" not in r:
    return ""
  rounds = ", ".join(f"{x:.2f}" for x in r["round_ratios"])
  return f"{r['torch']['img_per_s']:.1f} | **{r['ratio_to_torch']:.2f}x** ({rounds})"


def tables(lines: list[dict]) -> str:
  peak = next((l for l in lines if "peak_f32_gflop_s" in l), {})
  rows = [l for l in lines if "model" in l]
  out = []
  if peak:
    out.append(f"Peak (benchmarks/peak.py, same run): f32 {peak['peak_f32_gflop_s']:.0f} GFLOP/s, bf16 "
               f"{peak['peak_bf16_gflop_s']:.0f} GFLOP/s, copy {peak['copy_gb_s']:.1f} GB/s.\n")
  out.append("| model, batch, input | step | conv_impl | f32 img/s (% of peak) | PyTorch f32 | ratio (rounds) "
             "| bf16 img/s (% of peak) | PyTorch bf16 | ratio (rounds) |")
  out.append("|---|---|---|---|---|---|---|---|---|")
  groups = defaultdict(lambda: defaultdict(dict))
  order = []
  for r in rows:
    if r["batch_size"] <= 2:
      continue  # the compile-time rows
    g = (r["model"], r["batch_size"], r["image_size"], r["channels"], r["mode"])
    if g not in order:
      order.append(g)
    malloc = allocator(r)
    groups[g][(r["conv_impl"], r["bn_impl"], malloc)]["bf16" if r["half_precision"] else "f32"] = r
  for g in order:
    model, batch, size, channels, mode = g
    first = True
    for (conv, bn, malloc), by_dtype in groups[g].items():
      f32, bf16 = by_dtype.get("f32"), by_dtype.get("bf16")
      label = f"{model}, {batch}, {channels}x{size}x{size}" if first else ""
      impl = (f"`{conv}`" + (f" + bn `{bn}`" if bn != "auto" else "")
              + (f" + `REGNET_JAX_MALLOC={malloc}`" if malloc != "blocks" else ""))
      t32, tbf = _torch(f32), _torch(bf16)
      out.append(f"| {label} | {mode if first else ''} | {impl} | {_cell(f32, peak)} | "
                 f"{t32 if t32 else ' | '} | {_cell(bf16, peak)} | {tbf if tbf else ' | '} |")
      first = False
  out.append("\n| model, step, dtype, conv_impl, allocator | ours peak RSS (MB) | PyTorch peak RSS (MB) | faults/step |")
  out.append("|---|---|---|---|")
  for r in rows:
    if "torch" in r:
      out.append(f"| {r['model']} {r['mode']} {'bf16' if r['half_precision'] else 'f32'} `{r['conv_impl']}` "
                 f"{allocator(r)} | {r['peak_rss_mb']:.0f} | "
                 f"{r['torch']['peak_rss_mb']:.0f} | {r['minor_faults_per_step']:.0f} |")
  compiles = [r for r in rows if r["batch_size"] <= 2]
  if compiles:
    out.append("\nCompile seconds (batch 2, 224x224): " + "; ".join(
        f"{r['model']}{' scan' if r['scan_blocks'] else ''} {r['compile_s']:.1f}" for r in compiles))
  return "\n".join(out)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print("usage: python benchmarks/bench_tables.py RUN_BENCH.jsonl", file=sys.stderr)
    return 2
  with open(argv[0]) as f:
    lines = [json.loads(l) for l in f if l.strip()]
  print(tables(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
