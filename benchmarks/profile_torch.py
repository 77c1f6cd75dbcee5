"""Where the PyTorch reference step's time goes, per aten op, and side by side with ours by what each op computes.

  python benchmarks/profile_torch.py --model=regnetx32 --batch-size=128 --image-size=96 --channels=1 \
      --num-classes=10 [--bf16] [--mode=train|eval] [--steps=5] [--ours=OURS.json] [--json=F]

Runs `regnet_jax.torch_reference.make_step` (the step `bench --compare-torch` times) under `torch.profiler` and sums
each aten op's self CPU time per step (self: a parent's time excludes its children's, so nothing counts twice;
PyTorch runs an op's OpenMP threads inside the call, so self time is wall time on the calling thread).

--ours takes `benchmarks/profile_step.py --json` output of the same model, batch, precision and mode. Both
sides' ops are grouped into the same buckets (conv/matmul, bn+relu, other) and printed side by side,
with the ceiling that follows: if everything but our convolutions took no time at all, our step could be at most
torch step / our conv and matmul time faster than PyTorch. A speed target above that ceiling needs faster convolutions, not
faster glue. Figures are for the machine and load at hand: run both profiles in one quiet session.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time

from regnet_jax import step_args

# "conv/matmul": every convolution and matrix product; one bucket because XLA lowers 1x1 convs to dots and, on a
# CPU without oneDNN's fast kernels, convs and dots to YNNPACK fusions ("ynn"). "bn+relu": our batch-norm kernels
# also apply the ReLU (and the residual add) after the BN, so PyTorch's ReLU ops (forward clamp_min / relu,
# backward threshold_backward) count there too; its residual adds stay in "other", with layout and dtype copies.
BUCKETS = ("conv/matmul", "bn+relu", "other")


def torch_bucket(op: str) -> str:
  """An aten op or autograd node name -> the bucket of what it computes."""
  if re.search(r"conv", op, re.IGNORECASE) or re.fullmatch(r"aten::(addmm|mm|bmm|linear|matmul)|AddmmBackward0", op):
    return "conv/matmul"
  if re.search(r"batch_?norm|relu|threshold|clamp_min", op, re.IGNORECASE):
    return "bn+relu"
  return "other"


def ours_bucket(kind: str) -> str:
  """A profile_step.py kind (custom-call target, fusion kind and name, or HLO opcode) -> its bucket."""
  if kind.startswith("custom-call:"):
    target = kind.split(":", 1)[1]
    if "Conv" in target:
      return "conv/matmul"
    if target.startswith("RegnetBn"):
      return "bn+relu"
    return "other"
  if "convolution" in kind or kind == "dot" or kind.endswith((":dot", ":ynn")):
    return "conv/matmul"
  return "other"


def buckets(rows, bucket_of) -> dict[str, float]:
  """[(name or kind, ms per step)] -> {bucket: ms per step} over BUCKETS."""
  out = dict.fromkeys(BUCKETS, 0.0)
  for name, ms in rows:
    out[bucket_of(name)] += ms
  return out


def profile(step, steps: int, warmup: int) -> dict:
  """Per aten op: self CPU ms per step and calls per step, plus the step's wall ms, over `steps` profiled steps."""
  import torch

  for _ in range(warmup):
    step()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    t = time.perf_counter()
    for _ in range(steps):
      step()
    wall_s = time.perf_counter() - t
  per_op = collections.defaultdict(lambda: [0.0, 0])
  for e in prof.key_averages():
    per_op[e.key][0] += e.self_cpu_time_total / 1e3 / steps  # us -> ms per step
    per_op[e.key][1] += e.count / steps
  ops = [{"op": k, "bucket": torch_bucket(k), "ms_per_step": v[0], "calls_per_step": v[1]}
         for k, v in per_op.items() if v[0] > 0]
  ops.sort(key=lambda o: -o["ms_per_step"])
  return {"step_ms": wall_s * 1e3 / steps, "in_ops_ms": sum(o["ms_per_step"] for o in ops), "ops": ops,
          "buckets": buckets([(o["op"], o["ms_per_step"]) for o in ops], torch_bucket)}


def side_by_side(torch_profile: dict, ours: dict) -> dict:
  """Both profiles' buckets, and the ratio ceiling torch step / our conv time."""
  ours_b = buckets([(k["kind"], k["ms_per_step"]) for k in ours["kinds"]], ours_bucket)
  conv = ours_b["conv/matmul"]
  return {"torch_step_ms": torch_profile["step_ms"], "ours_step_ms": ours["step_ms"],
          "torch": torch_profile["buckets"], "ours": ours_b,
          "ratio_now": torch_profile["step_ms"] / ours["step_ms"],
          "ratio_ceiling_convs_only": torch_profile["step_ms"] / conv if conv > 0 else float("inf")}


def stock_reexec_env(environ: dict[str, str]) -> dict[str, str] | None:
  """The environment to re-execute in for --torch-env=stock, or None when `environ` is stock already."""
  from regnet_jax import runtime
  stock = runtime.stock_env(environ)
  return None if stock == environ else stock


def _use_env(name: str) -> None:
  """Re-executes this script under the environment `name` before torch is imported, if it is not already in it."""
  import os
  from regnet_jax import runtime
  if name == "same":
    runtime.reexec_with_allocator()
    return
  env = stock_reexec_env(dict(os.environ))
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python benchmarks/profile_torch.py", description=__doc__.split("\n")[0])
  step_args.add_step_args(p)
  p.add_argument("--bf16", action="store_true", help="torch.autocast bfloat16, as bench --half-precision compares")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--top", type=int, default=20, help="ops to print")
  p.add_argument("--ours", default="", help="profile_step.py --json output of the same configuration")
  p.add_argument("--json", default="", help="also write the full summary here")
  p.add_argument("--torch-env", choices=("same", "stock"), default="same",
                 help="same: under regnet_jax's allocator settings (runtime.py), as profile_step.py runs ours; stock: "
                      "without them. bench --compare-torch keeps the faster of the two per round; on the 2026-12-07 "
                      "evening machine PyTorch's regnetx_400mf bf16 step ran at 77-107 img/s stock, 123-131 same")
  a = p.parse_args(argv)
  if argv is None:  # a command line, not a test calling main(): the process environment is ours to set
    _use_env(a.torch_env)
  ours = None
  if a.ours:
    with open(a.ours) as f:
      ours = json.load(f)
    want = {"model": a.model, "batch_size": a.batch_size, "image_size": a.image_size, "half_precision": a.bf16,
            "mode": a.mode}
    differ = {k: (ours.get(k), v) for k, v in want.items() if ours.get(k) != v}
    if differ:
      raise SystemExit(f"--ours={a.ours} profiles another configuration ({differ}: theirs, asked); profile the "
                       "same model, batch, image size, precision and mode on both sides")
  from regnet_jax import torch_reference
  step, impl = torch_reference.make_step(a.model, batch_size=a.batch_size, image_size=a.image_size,
                                         channels=a.channels, num_classes=a.num_classes, mode=a.mode, bf16=a.bf16)
  out = profile(step, a.steps, a.warmup)
  out.update(model=a.model, batch_size=a.batch_size, image_size=a.image_size, bf16=a.bf16, mode=a.mode,
             steps=a.steps, impl=impl, torch_env=a.torch_env)
  print(f"{impl} {a.model} b{a.batch_size} {a.image_size}px {a.mode}: {out['step_ms']:.1f} ms/step profiled, "
        f"{out['in_ops_ms']:.1f} ms in aten ops (self time)")
  print(f"\n{'op':44s} {'bucket':12s} {'ms/step':>8s} {'calls':>6s}")
  for o in out["ops"][:a.top]:
    print(f"{o['op'][:44]:44s} {o['bucket']:12s} {o['ms_per_step']:8.2f} {o['calls_per_step']:6.0f}")
  if ours is not None:
    out["side_by_side"] = s = side_by_side(out, ours)
    print(f"\n{'bucket':12s} {'pytorch ms':>10s} {'ours ms':>8s}")
    for b in BUCKETS:
      print(f"{b:12s} {s['torch'][b]:10.1f} {s['ours'][b]:8.1f}")
    print(f"{'step':12s} {s['torch_step_ms']:10.1f} {s['ours_step_ms']:8.1f}")
    print(f"\nratio to PyTorch now {s['ratio_now']:.2f}x; ceiling with only our convolutions left "
          f"{s['ratio_ceiling_convs_only']:.2f}x")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
