"""Checks that every zoo model torchvision or timm builds converts to equal logits.

For each (zoo model, source) pair of regnet_jax.weights.names: build the torch model randomly initialised (random
BN statistics and affine parameters, random biases), convert its state dict, and compare the logits of the Flax
model (float32, conv_impl='xla') with torch's on the same random input. Prints one table row per pair and exits
non-zero if any max |logit diff| exceeds --tol.

Needs torch, torchvision and timm (not regnet_jax dependencies):
  python scripts/check_all_weights.py [--sources torchvision timm] [--models regnety_400mf ...] [--tol 1e-4]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from regnet_jax.weights import names, reference  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sources", nargs="+", default=["torchvision", "timm"], choices=["torchvision", "timm"])
  parser.add_argument("--models", nargs="*", default=None, help="zoo names (default: all with a counterpart)")
  parser.add_argument("--height", type=int, default=72)
  parser.add_argument("--width", type=int, default=88)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--tol", type=float, default=1e-4)
  args = parser.parse_args(argv)

  import torch
  torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
  tables = {"torchvision": names.TORCHVISION, "timm": names.TIMM}
  header = (f"{'zoo model':<18} {'source':<12} {'torch model':<16} {'M params':>9} {'max|diff|':>10} "
            f"{'max|logit|':>10} {'rel':>9} {'torch s':>8} {'jax s':>7}  ok")
  print(header)
  print("-" * len(header), flush=True)
  failures, start = 0, time.perf_counter()
  for source in args.sources:
    for zoo_name, torch_name in tables[source].items():
      if args.models and zoo_name not in args.models:
        continue
      model = reference.randomize_(reference.build_torch_model(source, zoo_name), seed=0)
      c = reference.compare_logits(model, source, zoo_name, batch=args.batch, height=args.height, width=args.width)
      ok = c.max_abs_diff <= args.tol
      failures += not ok
      print(f"{zoo_name:<18} {source:<12} {torch_name:<16} {c.num_params / 1e6:>9.2f} {c.max_abs_diff:>10.2e} "
            f"{c.max_abs_logit:>10.3f} {c.max_abs_diff / c.max_abs_logit:>9.1e} {c.torch_seconds:>8.2f} "
            f"{c.jax_seconds:>7.1f}  {'yes' if ok else 'NO'}", flush=True)
      del model
      gc.collect()
  print(f"{failures} of the checked pairs exceed tol={args.tol:g}; input {args.batch}x3x{args.height}x{args.width}, "
        f"{time.perf_counter() - start:.0f} s total")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
