"""Where one sweep trial's time goes, and sweep trials per hour, for two process layouts and the compilation cache.

  nice -n 10 .venv/bin/python benchmarks/trial_cost.py [--trials=3] [--steps=50] [--runs=per-process,one-process]
      [--cache=off,cold,warm] [--init=level0,default] [--config=configs/sweeps/fashion_mnist_cpu.py] [--json=OUT.jsonl]

The trials are the first models of each space of the sweep config (round-robin over its spaces, so a 3-trial run
of the shipped CPU sweep trains one AnyNetX_A, one AnyNetX_E and one RegNet) with `train.num_train_steps` set to
--steps; everything else is the sweep's own recipe, trained by `regnet_jax.train.train_and_evaluate` exactly as
the sweep CLI does. Every run is a fresh set of processes of this script:

  per-process  one process per trial (process start, imports and the malloc re-exec paid by every trial)
  one-process  one process trains all trials in turn (the sweep CLI's default, `--trial_process=inprocess`)

each with the persistent XLA compilation cache `off`, `cold` (a fresh, empty cache directory: what a new sweep
sees) or `warm` (the directory `cold` filled: what a resumed or requeued sweep sees for the trials it retrains).

Phases per trial (seconds; the process phases are once per process):
  start     fork/exec until this script's first line, including regnet_jax.runtime's malloc re-exec
  import    jax, flax, optax, orbax and regnet_jax.train, and JAX's CPU backend
  setup     config validation, dataset info, mesh (train.prepare) and the train/eval batch iterators
  init      creating the train state (execution; its compilation is under compile)
  compile   every jit compilation in the trial (tracing, lowering, XLA), split into init / train / eval / other
  train     the rest: the train steps and the loop around them (by difference)
  eval      evaluating the whole test split (execution; its compilation is under compile)
  ckpt      checkpoint saves, waits and restores
  plot      the training-curve PNG

The machine's cores are shared with other jobs, so absolute numbers are "loaded"; runs are not interleaved, so
compare them only within one invocation and give the exact command next to any figure you quote.
"""
from __future__ import annotations

import time

T_FIRST_LINE = time.time()  # noqa: E402  (before any import: the 'start' phase ends here)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PHASES = ("setup", "init", "compile_init", "compile_train", "compile_eval", "compile_other", "train", "eval", "ckpt",
          "plot")
RUNS = ("per-process", "one-process")
CACHES = ("off", "cold", "warm")
INITS = ("level0", "default")


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "sweeps", "fashion_mnist_cpu.py"))
  p.add_argument("--trials", type=int, default=3, help="trials per run (round-robin over the config's spaces)")
  p.add_argument("--steps", type=int, default=50, help="train.num_train_steps of every trial")
  p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {RUNS}")
  p.add_argument("--cache", default="off,cold,warm", help=f"comma-separated subset of {CACHES}, run in this order")
  p.add_argument("--init", default="level0", help=f"comma-separated subset of {INITS}: how the train-state init "
                 "program is compiled; level0 as shipped (steps.INIT_COMPILER_OPTIONS), default = XLA's default "
                 "optimisation (the code before 2026-12-07)")
  p.add_argument("--json", default="", help="also append one JSON line per run to this file")
  p.add_argument("--workdir", default="", help="scratch directory (default: a fresh temporary one, removed)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a field of the sweep's train config (repeatable), e.g. --set=conv_impl=custom_vjp")
  # Internal: the child processes.
  p.add_argument("--child", default="", help=argparse.SUPPRESS)  # comma-separated trial positions
  p.add_argument("--child_workdir", default="", help=argparse.SUPPRESS)
  p.add_argument("--cache_dir", default="", help=argparse.SUPPRESS)
  p.add_argument("--spawned_at", type=float, default=0.0, help=argparse.SUPPRESS)
  p.add_argument("--child_init", default="level0", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  for name, allowed in (("runs", RUNS), ("cache", CACHES), ("init", INITS)):
    bad = sorted(set(getattr(args, name).split(",")) - set(allowed))
    if bad:
      p.error(f"--{name}: unknown {bad}; choose from {allowed}")
  if args.trials < 1 or args.steps < 1:
    p.error("--trials and --steps must be >= 1")
  return args


def load_sweep_config(path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def benchmark_trials(config, n: int):
  """The first model of every space, then the second of every space, ...: n trials spread over the spaces."""
  from regnet_jax.sweep.runner import plan_trials
  by_space: dict[str, list] = {}
  for t in plan_trials(config):
    by_space.setdefault(t.sample.space, []).append(t)
  columns = list(by_space.values())
  out = [col[k] for k in range(max(len(c) for c in columns)) for col in columns if k < len(col)]
  if len(out) < n:
    raise SystemExit(f"the config plans only {len(out)} trials; pass --trials <= {len(out)}")
  return out[:n]


# ------------------------------------------------------------------------------------------- child: measure


class Clock:
  """Wall time per phase of the current trial; compilations are charged to compile_* and taken out of the
  phase they happened in, so e.g. `eval` is the evaluation's execution only."""

  def __init__(self):
    self.totals: dict[str, float] = {}
    self.compiles: list[tuple[str, float]] = []
    self._compile_in_phase = 0.0

  def reset(self):
    self.totals, self.compiles, self._compile_in_phase = {}, [], 0.0

  def on_compile(self, event: str, seconds: float, **kwargs):
    from jax._src import dispatch
    if event not in (dispatch.JAXPR_TRACE_EVENT, dispatch.JAXPR_TO_MLIR_MODULE_EVENT, dispatch.BACKEND_COMPILE_EVENT):
      return
    name = str(kwargs.get("fun_name", ""))
    kind = ("compile_train" if "train_step" in name else "compile_eval" if "eval_step" in name
            else "compile_init" if "init_state" in name else "compile_other")
    self.totals[kind] = self.totals.get(kind, 0.0) + seconds
    self.compiles.append((name, seconds))
    self._compile_in_phase += seconds

  @contextlib.contextmanager
  def phase(self, name: str):
    outer = self._compile_in_phase
    self._compile_in_phase = 0.0
    start = time.perf_counter()
    try:
      yield
    finally:
      wall = time.perf_counter() - start
      inner = self._compile_in_phase
      self.totals[name] = self.totals.get(name, 0.0) + wall - inner
      self._compile_in_phase = outer + inner


def _timed(clock: Clock, name: str, fn):
  @functools.wraps(fn)
  def wrapper(*a, **k):
    with clock.phase(name):
      return fn(*a, **k)
  return wrapper


def instrument(clock: Clock) -> None:
  """Wraps the functions train_and_evaluate calls (module attributes, looked up at call time)."""
  import jax
  from regnet_jax import checkpointing, metrics_io, steps, train
  from regnet_jax import data as data_lib
  jax.monitoring.register_event_duration_secs_listener(clock.on_compile)
  train.prepare = _timed(clock, "setup", train.prepare)
  data_lib.make_train_batches = _timed(clock, "setup", data_lib.make_train_batches)
  steps.create_train_state = _timed(clock, "init", steps.create_train_state)
  train.evaluate = _timed(clock, "eval", train.evaluate)
  metrics_io.plot_training_curves = _timed(clock, "plot", metrics_io.plot_training_curves)
  for method in ("save", "wait", "restore", "close"):
    setattr(checkpointing.Checkpointer, method, _timed(clock, "ckpt", getattr(checkpointing.Checkpointer, method)))


def rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def child_main(args) -> None:
  started = T_FIRST_LINE - args.spawned_at if args.spawned_at else float("nan")
  t0 = time.perf_counter()
  import jax
  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
  from regnet_jax import steps, train
  from regnet_jax.sweep.runner import trial_train_config
  if args.child_init == "default":
    steps.INIT_COMPILER_OPTIONS = {}
  jax.devices()
  import_s = time.perf_counter() - t0
  print(json.dumps({"process": {"start": started, "import": import_s}}), flush=True)
  config = load_sweep_config(args.config)
  config.train.num_train_steps = args.steps
  for item in args.set:
    key, value = item.split("=", 1)
    old = config.train[key]
    config.train[key] = (value.lower() in ("1", "true")) if isinstance(old, bool) else type(old)(value)
  trials = benchmark_trials(config, max(int(i) for i in args.child.split(",")) + 1)
  clock = Clock()
  instrument(clock)
  for i in (int(i) for i in args.child.split(",")):
    t = trials[i]
    clock.reset()
    start = time.perf_counter()
    metrics = train.train_and_evaluate(trial_train_config(config.train, t.sample),
                                       os.path.join(args.child_workdir, t.trial_id))
    total = time.perf_counter() - start
    phases = dict(clock.totals)
    phases["train"] = total - sum(v for k, v in phases.items() if k != "train")
    print(json.dumps({"trial": t.trial_id, "total": total, "phases": phases, "rss_mb": rss_mb(),
                      "eval_accuracy": metrics["eval_accuracy"], "compiles": len(clock.compiles)}), flush=True)


# -------------------------------------------------------------------------------------------- parent: runs


def spawn(args, positions, workdir, cache_dir, init) -> tuple[list[dict], float]:
  cmd = [sys.executable, os.path.abspath(__file__), f"--config={args.config}", f"--steps={args.steps}",
         *(f"--set={item}" for item in args.set),
         f"--child={','.join(map(str, positions))}", f"--child_workdir={workdir}", f"--cache_dir={cache_dir}",
         f"--child_init={init}"]
  start = time.perf_counter()
  cmd.append(f"--spawned_at={time.time()}")
  out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False, cwd=ROOT)
  wall = time.perf_counter() - start
  if out.returncode:
    raise SystemExit(f"child {cmd} failed with exit code {out.returncode}")
  lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  return lines, wall


def run(args, layout: str, cache: str, init: str, scratch: str) -> dict:
  workdir = tempfile.mkdtemp(prefix=f"{layout}-{cache}-{init}-", dir=scratch)
  cache_dir = "" if cache == "off" else os.path.join(scratch, f"xla_cache_{layout}_{init}")
  if cache == "cold" and os.path.isdir(cache_dir):
    shutil.rmtree(cache_dir)
  positions = list(range(args.trials))
  groups = [[i] for i in positions] if layout == "per-process" else [positions]
  processes, trials, wall = [], [], 0.0
  for g in groups:
    lines, w = spawn(args, g, workdir, cache_dir, init)
    wall += w
    processes += [line["process"] for line in lines if "process" in line]
    trials += [line for line in lines if "trial" in line]
  fixed = {k: sum(p[k] for p in processes) / len(trials) for k in ("start", "import")}
  phases = {k: sum(t["phases"].get(k, 0.0) for t in trials) / len(trials) for k in PHASES}
  return {"layout": layout, "cache": cache, "init": init, "trials": len(trials), "steps": args.steps, "wall_s": wall,
          "trials_per_hour": 3600 * len(trials) / wall, "per_trial": {**fixed, **phases},
          "per_trial_detail": trials, "processes": processes}


def report(results: list[dict]) -> str:
  cols = ("start", "import") + PHASES
  head = "| run | cache | init | " + " | ".join(cols) + " | s/trial | trials/h |"
  lines = [head, "|" + "---|" * (len(cols) + 5)]
  for r in results:
    p = r["per_trial"]
    lines.append(f"| {r['layout']} | {r['cache']} | {r['init']} | " + " | ".join(f"{p[c]:.2f}" for c in cols)
                 + f" | {r['wall_s'] / r['trials']:.1f} | {r['trials_per_hour']:.0f} |")
  lines.append("")
  for r in results:
    acc = ", ".join(f"{t['trial']} {t['eval_accuracy']:.4f} ({t['compiles']} jit compiles, RSS {t['rss_mb']:.0f} MB)"
                    for t in r["per_trial_detail"])
    lines.append(f"{r['layout']}/{r['cache']}/{r['init']}: {acc}")
  return "\n".join(lines)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.child:
    child_main(args)
    return 0
  from regnet_jax import runtime
  del runtime  # the children re-exec themselves with the malloc tunables, as the sweep CLI does
  scratch = args.workdir or tempfile.mkdtemp(prefix="trial_cost-")
  os.makedirs(scratch, exist_ok=True)
  results = []
  try:
    for layout, cache, init in ((lo, c, i) for i in args.init.split(",") for lo in args.runs.split(",")
                                for c in args.cache.split(",")):
        r = run(args, layout, cache, init, scratch)
        results.append(r)
        print(f"{layout}/{cache}/{init}: {r['wall_s']:.1f} s for {r['trials']} trials, {r['trials_per_hour']:.0f} "
              "trials/hour", flush=True)
        if args.json:
          with open(args.json, "a") as f:
            f.write(json.dumps({**r, "command": " ".join(sys.argv)}) + "\n")
  finally:
    if not args.workdir:
      shutil.rmtree(scratch, ignore_errors=True)
  print(report(results))
  return 0


if __name__ == "__main__":
  if "--child" in " ".join(sys.argv):
    from regnet_jax import runtime as _runtime
    _runtime.reexec_with_allocator()  # as the sweep CLI: the train step's speed depends on it
  sys.exit(main())
