"""Where a train (or eval) step's time goes, per XLA op: traces the step `regnet_jax.bench` times and sums each
op's time from the profiler.

  python benchmarks/profile_step.py --model=regnetx32 --batch-size=128 --image-size=96 --channels=1 \
      --num-classes=10 [--half-precision] [--conv-impl=auto] [--bn-impl=auto] [--steps=5] [--top=25] [--json=F]

XLA:CPU runs a compiled step as a sequence of thunks (fusions, oneDNN custom calls, copies, ...), and its
profiler records one event per thunk on the executing thread. This script runs `--warmup` steps, traces `--steps`
more with `jax.profiler.trace(create_perfetto_trace=True)`, and reads the perfetto JSON back: per op, its kind
from the optimised HLO (a custom call's target, a fusion's kind and root op, or the opcode), total milliseconds
per step and its share of the traced wall time, then totals per kind. Thunks that XLA runs concurrently are each
counted in full, so the shares can sum to more than 100%; what they sum to less is time outside any thunk
(dispatch, the executor's waits). Figures are for the machine and load at hand: compare within one run.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time

if __name__ == "__main__":
  from regnet_jax import runtime
  runtime.reexec_with_allocator()

import jax

from regnet_jax import bench, step_args

# Profiler bookkeeping on the XLA threads, not ops.
_SKIP = re.compile(r"^(end: |ThreadpoolListener|ThunkExecutor|ThreadPool|Eigen|\$)")


def op_kinds(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (kind, output shape), from optimised HLO text; kind: custom-call target, fusion kind
  plus what XLA named it after (else the fused root's opcode), else the opcode."""
  computations: dict[str, str] = {}  # fused computation name -> root opcode
  current = None
  for line in hlo_text.splitlines():
    m = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if m and "=" not in line.split("{")[0]:
      current = m.group(1)
      continue
    m = re.match(r"^\s*ROOT\s+%?[\w.\-]+\s*=\s*[^ ]+(?:\s+[^ ]+)*?\s+([\w\-]+)\(", line)
    if current and m:
      computations[current] = m.group(1)
  kinds = {}
  for line in hlo_text.splitlines():
    m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\(", line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    shape = re.sub(r"\{[^}]*\}", "", shape)  # drop layouts
    if opcode == "custom-call":
      t = re.search(r'custom_call_target="([^"]+)"', line)
      kinds[name] = ("custom-call:" + (t.group(1) if t else "?"), shape)
    elif opcode == "fusion":
      # XLA names a fusion after the ops it fuses ("add_bitcast_fusion.4": a gradient add); the name says more
      # than the root op, which is often a bitcast.
      k = re.search(r"kind=(\w+)", line)
      c = re.search(r"calls=%?([\w.\-]+)", line)
      what = re.sub(r"(\.\d+)+$", "", name)
      what = what[:-len("_fusion")] if what.endswith("_fusion") else (computations.get(c.group(1), "?") if c else "?")
      kinds[name] = (f"fusion:{k.group(1) if k else '?'}:{what}", shape)
    else:
      kinds[name] = (opcode, shape)
  return kinds


def _simplify(kind: str) -> str:
  """Groups the custom calls of regnet_jax's extension by what they compute."""
  if kind.startswith("custom-call:"):
    target = kind.split(":", 1)[1]
    target = re.sub(r"^regnet_jax_onednn_", "", target)
    return "custom-call:" + target
  return kind


def read_trace(log_dir: str) -> list[dict]:
  paths = sorted(glob.glob(f"{log_dir}/**/*.trace.json.gz", recursive=True))
  if not paths:
    raise RuntimeError(f"the profiler wrote no perfetto trace under {log_dir}; is this jax build's profiler on?")
  with gzip.open(paths[-1]) as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def summarise(events: list[dict], kinds: dict[str, tuple[str, str]], steps: int, wall_s: float) -> dict:
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  per_op = collections.defaultdict(float)
  for e in events:
    if e.get("ph") != "X" or _SKIP.match(e.get("name", "")):
      continue
    if "python" in threads.get((e["pid"], e.get("tid")), "python"):
      continue  # the host side: dispatch, argument handling
    per_op[e["name"]] += e.get("dur", 0.0) / 1e3  # us -> ms
  ms_step = wall_s * 1e3 / steps
  ops = [{"op": name, "kind": _simplify(kinds.get(name, ("?", ""))[0]), "shape": kinds.get(name, ("?", ""))[1],
          "ms_per_step": ms / steps, "share": ms / steps / ms_step} for name, ms in per_op.items()]
  ops.sort(key=lambda o: -o["ms_per_step"])
  by_kind = collections.defaultdict(lambda: [0.0, 0])
  for o in ops:
    by_kind[o["kind"]][0] += o["ms_per_step"]
    by_kind[o["kind"]][1] += 1
  kinds_out = [{"kind": k, "ms_per_step": v[0], "share": v[0] / ms_step, "ops": v[1]}
               for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1][0])]
  return {"step_ms": ms_step, "in_ops_ms": sum(o["ms_per_step"] for o in ops), "kinds": kinds_out, "ops": ops}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python benchmarks/profile_step.py", description=__doc__.split("\n")[0])
  step_args.add_step_args(p)
  p.add_argument("--conv-impl", default="auto")
  p.add_argument("--bn-impl", default="auto")
  p.add_argument("--half-precision", action="store_true")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--top", type=int, default=25, help="ops to print")
  p.add_argument("--json", default="", help="also write the full summary here")
  a = p.parse_args(argv)
  prepared = bench.prepare(a.model, batch_size=a.batch_size, image_size=a.image_size, channels=a.channels,
                           num_classes=a.num_classes, conv_impl=a.conv_impl, bn_impl=a.bn_impl,
                           half_precision=a.half_precision, mode=a.mode)
  state = prepared.state
  for _ in range(a.warmup):
    state = prepared.run(state)
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      t = time.perf_counter()
      for _ in range(a.steps):
        state = prepared.run(state)
      wall_s = time.perf_counter() - t
    events = read_trace(log_dir)
  out = summarise(events, op_kinds(prepared.compiled.as_text()), a.steps, wall_s)
  out.update(model=a.model, batch_size=a.batch_size, image_size=a.image_size, half_precision=a.half_precision,
             conv_impl=a.conv_impl, bn_impl=a.bn_impl, mode=a.mode, steps=a.steps)
  print(f"{a.model} b{a.batch_size} {a.image_size}px {'bf16' if a.half_precision else 'f32'} {a.mode}: "
        f"{out['step_ms']:.1f} ms/step traced, {out['in_ops_ms']:.1f} ms in ops (summed over threads)")
  print(f"{'kind':58s} {'ms/step':>8s} {'share':>6s} {'ops':>4s}")
  for k in out["kinds"]:
    print(f"{k['kind'][:58]:58s} {k['ms_per_step']:8.2f} {k['share']:6.1%} {k['ops']:4d}")
  print(f"\n{'op':16s} {'kind':34s} {'output':36s} {'ms/step':>8s} {'share':>6s}")
  for o in out["ops"][:a.top]:
    print(f"{o['op'][:16]:16s} {o['kind'][:34]:34s} {o['shape'][:36]:36s} {o['ms_per_step']:8.2f} {o['share']:6.1%}")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
