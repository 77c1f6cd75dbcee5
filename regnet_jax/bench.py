"""Benchmark the real jitted train (or eval) step of the training code on device-resident random data.

  python -m regnet_jax.bench --model=regnetx32 --batch-size=128 --image-size=96 --channels=1 --num-classes=10 \
      [--conv-impl=auto] [--bn-impl=auto] [--half-precision] [--scan-blocks] [--mode=train|eval] [--steps=10] \
      [--warmup=2] [--compare-torch [--rounds=N]] [--peak-gflops=G] [--json]

The step timed is `regnet_jax.steps.train_step` exactly as training runs it (on-device normalisation, forward,
backward, SGD update, BN statistics, state donated); only the input is random uint8 images already on the device
at the model's resolution. Prints compile seconds, median and min step seconds, img/s, achieved GFLOP/s (and with
--peak-gflops from benchmarks/peak.py the fraction of the machine's GEMM peak) and peak RSS (`--json`
adds page faults per step and the allocator settings the process ran with, see regnet_jax/runtime.py).
`--compare-torch` also times the same network in PyTorch eager (channels_last; with --half-precision under
torch.autocast bfloat16; eval under torch.inference_mode) in a subprocess, in the same run, and prints the ratio;
by default each round runs it both under our allocator settings and without them and keeps its faster
(`--torch-env`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

if __name__ == "__main__":
  # Before JAX is imported: the re-exec (regnet_jax/runtime.py) would otherwise import it twice.
  from regnet_jax import runtime
  runtime.reexec_with_allocator()

import jax
import jax.numpy as jnp
import numpy as np

from regnet_jax import anynet, complexity, config as config_lib, optim, runtime, sharding, step_args, steps, zoo
from regnet_jax.data import DatasetInfo
from regnet_jax.torch_reference import peak_rss_mb


def synthetic_info(channels: int, num_classes: int) -> DatasetInfo:
  return DatasetInfo(name="synthetic", num_classes=num_classes, channels=channels, num_train=1, num_eval=1,
                     mean=(127.5,) * channels, std=(64.0,) * channels)


def step_flops_per_image(spec, mode: str, *, image_size: int, channels: int = 3, num_classes: int = 1000) -> float:
  """Issue 5's convention: a train step costs 3x the forward pass (forward, data and weight gradients), eval 1x;
  2 flops per multiply-add (the analytic complexity counts multiply-adds, as pycls does)."""
  macs = complexity.complexity(spec, image_size=image_size, channels=channels, num_classes=num_classes).flops
  return (3 if mode == "train" else 1) * 2 * macs


@dataclasses.dataclass(frozen=True)
class PreparedStep:
  """A compiled train (or eval) step with its state and batch: what `bench` times and benchmarks/profile_step.py
  traces. `run(state) -> state` runs one step to completion."""
  spec: object
  compiled: object
  run: Callable
  state: object
  compile_s: float
  rss_before_state: float


def prepare(model: str, *, batch_size: int = 128, image_size: int = 224, channels: int = 3, num_classes: int = 1000,
            conv_impl: str = "auto", bn_impl: str = "auto", half_precision: bool = False, scan_blocks: bool = False,
            mode: str = "train") -> PreparedStep:
  """Builds and compiles the training code's step for this model on device-resident random uint8 images."""
  spec = zoo.get_spec(model)
  info = synthetic_info(channels, num_classes)
  c = config_lib.base_config()
  c.update(dict(model=model, conv_impl=conv_impl, bn_impl=bn_impl, half_precision=half_precision, scan_blocks=scan_blocks,
                image_size=image_size, batch_size=batch_size))
  config_lib.validate(c)
  mesh = sharding.make_mesh()
  sharding.check_global_batch(batch_size, mesh)
  net = anynet.build_model(spec, num_classes=num_classes, conv_impl=conv_impl, bn_impl=bn_impl, scan_blocks=scan_blocks,
                           dtype=jnp.bfloat16 if half_precision else jnp.float32)
  tx = optim.make_optimizer(c, steps_per_epoch=1000)
  kw = dict(model=net, tx=tx, info=info, image_size=image_size)
  rng = jax.random.key(0)
  rss_before_state = peak_rss_mb()  # the runtime: interpreter, JAX, XLA, oneDNN, the model's Python objects
  state = steps.create_train_state(rng, mesh, **kw)
  cfg = steps.StepConfig(image_size=image_size)
  data = np.random.default_rng(0)
  batch = sharding.global_batch({
      "image": data.integers(0, 256, (batch_size, image_size, image_size, channels), dtype=np.uint8),
      "label": data.integers(0, num_classes, (batch_size,), dtype=np.int32),
      "mask": np.ones((batch_size,), bool)}, mesh)

  if mode == "train":
    abstract = steps.abstract_train_state(rng, mesh, **kw)
    fn = steps.jit_train_step(mesh, abstract, model=net, tx=tx, info=info, cfg=cfg)
    t = time.perf_counter()
    compiled = fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t

    def run(state):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      return state
  else:
    fn = steps.jit_eval_step(mesh, model=net, info=info, cfg=cfg)
    t = time.perf_counter()
    compiled = fn.lower(state.params, state.batch_stats, batch).compile()
    compile_s = time.perf_counter() - t

    def run(state):
      jax.block_until_ready(compiled(state.params, state.batch_stats, batch))
      return state
  return PreparedStep(spec=spec, compiled=compiled, run=run, state=state, compile_s=compile_s,
                      rss_before_state=rss_before_state)


def bench(model: str, *, batch_size: int = 128, image_size: int = 224, channels: int = 3, num_classes: int = 1000,
          conv_impl: str = "auto", bn_impl: str = "auto", half_precision: bool = False, scan_blocks: bool = False, mode: str = "train",
          steps_: int = 10, warmup: int = 2, rounds: int = 1, between_rounds=None) -> dict:
  """Times `steps_` steps after `warmup`, `rounds` times; `between_rounds(i)` runs after round i (the PyTorch
  reference: interleaving the two spreads the machine's drift over both). Figures: medians over all steps."""
  prepared = prepare(model, batch_size=batch_size, image_size=image_size, channels=channels, num_classes=num_classes,
                     conv_impl=conv_impl, bn_impl=bn_impl, half_precision=half_precision, scan_blocks=scan_blocks,
                     mode=mode)
  spec, compiled, run, state = prepared.spec, prepared.compiled, prepared.run, prepared.state
  compile_s, rss_before_state = prepared.compile_s, prepared.rss_before_state
  rss_before_steps = peak_rss_mb()
  for _ in range(warmup):
    state = run(state)
  times, round_medians, faults = [], [], 0
  for i in range(rounds):
    f0, round_times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for _ in range(steps_):
      t = time.perf_counter()
      state = run(state)
      round_times.append(time.perf_counter() - t)
    # Page faults per step: XLA:CPU's per-step buffers are fresh memory unless the allocator keeps them
    # (regnet_jax/runtime.py); each fault is a page the kernel zeroes inside the timed step.
    faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    times += round_times
    round_medians.append(statistics.median(round_times))
    if between_rounds is not None:
      between_rounds(i)
  faults /= max(steps_ * rounds, 1)
  med = statistics.median(times)
  gflop_s = step_flops_per_image(spec, mode, image_size=image_size, channels=channels,
                                 num_classes=num_classes) * batch_size / med / 1e9
  return {"model": model, "mode": mode, "batch_size": batch_size, "image_size": image_size, "channels": channels,
          "num_classes": num_classes, "conv_impl": conv_impl, "bn_impl": bn_impl, "half_precision": half_precision,
          "scan_blocks": scan_blocks, "steps": steps_, "warmup": warmup, "rounds": rounds,
          "round_step_s_median": round_medians, "backend": jax.default_backend(),
          "devices": jax.device_count(), "jax": jax.__version__, "compile_s": compile_s, "step_s_median": med,
          "step_s_min": min(times), "img_per_s": batch_size / med, "gflop_s": gflop_s,
          "minor_faults_per_step": faults, "peak_rss_mb": peak_rss_mb(),
          "memory_mb": memory_breakdown(compiled, rss_before_state, rss_before_steps),
          # Set by runtime.py (REGNET_JAX_MALLOC); the PyTorch child shares them.
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "ld_preload": os.environ.get("LD_PRELOAD", "")}


def memory_breakdown(compiled, rss_before_state: float, rss_before_steps: float) -> dict:
  """Where the step's peak resident memory goes (MB): the process before the train state exists, its peak once
  compiled (the state, the batch, the compiler's own peak), and XLA's buffer assignment of the step: arguments,
  outputs (donated arguments alias them) and the temporaries block (activations kept for the backward pass plus
  scratch), which the block cache or the retained heap (runtime.py) keeps resident between steps."""
  out = {"rss_before_state": rss_before_state, "rss_before_steps": rss_before_steps}
  stats = compiled.memory_analysis()
  if stats is not None:
    for name in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                 "generated_code_size_in_bytes"):
      value = getattr(stats, name, None)
      if value is not None:
        out["xla_" + name.removesuffix("_size_in_bytes")] = value / 2**20
  return out


TORCH_ENVS = {"same": "our environment (LD_PRELOAD, GLIBC_TUNABLES as regnet_jax/runtime.py set them)",
              "stock": "the environment without regnet_jax's allocator settings (runtime.stock_env)"}


def torch_reference(args, env_name: str = "same") -> dict:
  """PyTorch eager channels_last on the same network, in its own process (own RSS, own threads); with
  --half-precision under torch.autocast bfloat16, the same f32-parameter / bf16-compute split as ours.
  env_name: "same" runs it under our allocator settings, "stock" under the environment without them."""
  cmd = [sys.executable, "-m", "regnet_jax.torch_reference", f"--model={args.model}",
         f"--batch-size={args.batch_size}", f"--image-size={args.image_size}", f"--channels={args.channels}",
         f"--num-classes={args.num_classes}", f"--steps={args.steps}", f"--warmup={args.warmup}",
         f"--mode={args.mode}", "--json"] + (["--bf16"] if args.half_precision else [])
  env = dict(os.environ) if env_name == "same" else runtime.stock_env(dict(os.environ))
  out = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if out.returncode:
    raise RuntimeError(f"PyTorch reference failed (install the compare extra: pip install -e '.[compare]'):\n"
                       f"{out.stderr[-2000:]}")
  return dict(json.loads(out.stdout.strip().splitlines()[-1]), env=env_name)


def torch_round(args) -> dict:
  """One round of the PyTorch reference: under each of --torch-env's environments, the fastest counting (with
  `best`, PyTorch is not held to our allocator: the block cache made its regnetx32 bf16 step slower here and its
  regnetx_400mf step faster, so neither environment alone is fair to it)."""
  names = ("stock", "same") if args.torch_env == "best" else (args.torch_env,)
  runs = [torch_reference(args, n) for n in names]
  best = max(runs, key=lambda t: t["img_per_s"])
  return dict(best, by_env={t["env"]: t["img_per_s"] for t in runs})


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m regnet_jax.bench", description=__doc__.split("\n")[0])
  step_args.add_step_args(p)
  p.add_argument("--conv-impl", default="auto")
  p.add_argument("--bn-impl", default="auto", help="xla, native (fused BN+add+ReLU, CPU) or auto")
  p.add_argument("--half-precision", action="store_true", help="bf16 compute, f32 parameters")
  p.add_argument("--scan-blocks", action="store_true", help="nn.scan over identical blocks")
  p.add_argument("--steps", type=int, default=10, help="timed steps (median and min reported)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  p.add_argument("--compare-torch", action="store_true", help="also time PyTorch eager channels_last")
  p.add_argument("--rounds", type=int, default=1,
                 help="repeat the timed steps this many times (with --compare-torch: alternating with PyTorch)")
  p.add_argument("--peak-gflops", type=float, default=0.0,
                 help="the machine's GEMM peak (benchmarks/peak.py) for the printed fraction; 0: not printed")
  p.add_argument("--torch-env", choices=("best",) + tuple(TORCH_ENVS), default="best",
                 help="the environment of the PyTorch reference: best (each round runs it under both and keeps the "
                      "faster; default), " + ", ".join(f"{k}: {v}" for k, v in TORCH_ENVS.items()))
  p.add_argument("--json", action="store_true")
  a = p.parse_args(argv)
  if a.rounds < 1:
    print(f"error: --rounds={a.rounds} must be >= 1", file=sys.stderr)
    return 2
  if a.peak_gflops < 0:
    print(f"error: --peak-gflops={a.peak_gflops} must be >= 0 (0: no fraction printed)", file=sys.stderr)
    return 2
  torch_runs = []
  try:
    r = bench(a.model, batch_size=a.batch_size, image_size=a.image_size, channels=a.channels,
              num_classes=a.num_classes, conv_impl=a.conv_impl, bn_impl=a.bn_impl, half_precision=a.half_precision,
              scan_blocks=a.scan_blocks, mode=a.mode, steps_=a.steps, warmup=a.warmup, rounds=a.rounds,
              between_rounds=(lambda i: torch_runs.append(torch_round(a))) if a.compare_torch else None)
  except (KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if a.compare_torch:
    # Medians over rounds; each round's ratio pairs our round with the PyTorch run right after it.
    r["torch"] = dict(torch_runs[-1], img_per_s=statistics.median(t["img_per_s"] for t in torch_runs),
                      round_img_per_s=[t["img_per_s"] for t in torch_runs],
                      round_env=[t["env"] for t in torch_runs],
                      round_img_per_s_by_env={n: [t["by_env"][n] for t in torch_runs] for n in torch_runs[0]["by_env"]})
    r["torch"].pop("by_env", None)
    r["torch"].pop("env", None)
    r["round_ratios"] = [a.batch_size / s / t["img_per_s"] for s, t in zip(r["round_step_s_median"], torch_runs)]
    r["ratio_to_torch"] = r["img_per_s"] / r["torch"]["img_per_s"]
  if a.peak_gflops > 0:
    r["fraction_of_peak"] = r["gflop_s"] / a.peak_gflops
  if a.json:
    print(json.dumps(r))
  else:
    print(f"{r['model']} {r['mode']} batch {r['batch_size']} {r['image_size']}x{r['image_size']}x{r['channels']} "
          f"conv_impl={r['conv_impl']} bn_impl={r['bn_impl']}{' bf16' if r['half_precision'] else ''}{' scan' if r['scan_blocks'] else ''}"
          f": compile {r['compile_s']:.1f} s | step median {r['step_s_median']:.3f} s (min {r['step_s_min']:.3f}) "
          f"| {r['img_per_s']:.1f} img/s | {r['gflop_s']:.0f} GFLOP/s"
          + (f" ({100 * r['fraction_of_peak']:.0f}% of peak)" if "fraction_of_peak" in r else "")
          + f" | peak RSS {r['peak_rss_mb']:.0f} MB")
    m = r["memory_mb"]
    print("  memory (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in m.items()))
    if a.compare_torch:
      t = r["torch"]
      print(f"  {t['impl']} (torch {t['torch']}): {t['img_per_s']:.1f} img/s -> ratio {r['ratio_to_torch']:.2f}x"
            f" (per round: {', '.join(f'{x:.2f}' for x in r['round_ratios'])}; PyTorch per round, by environment: "
            + "; ".join(f"{n} {', '.join(f'{x:.1f}' for x in v)}" for n, v in t["round_img_per_s_by_env"].items())
            + ")")
  return 0


if __name__ == "__main__":
  sys.exit(main())
