"""python -m regnet_jax.sweep --config=configs/sweeps/NAME.py --workdir=DIR [--shard=I/N] [--plan]
                            [--trial_process=inprocess|subprocess] [--on_trial_error=stop|skip]
                            [--compilation_cache=auto|none|DIR] [--reuse_from=DIR ...]

Samples the sweep's models, trains each with the sweep's recipe through `regnet_jax.train.train_and_evaluate`,
appends one JSON line per finished trial to DIR/results.jsonl and skips finished trials when run again.
`--plan` prints the trials (and this shard's share) without training.

--trial_process=inprocess (default) trains every trial in this process; subprocess starts a child per trial, so a
trial that crashes its process fails alone (pair it with --on_trial_error=skip to go on with the others). The
persistent XLA compilation cache (default: auto, ~/.cache/regnet_jax/xla/<cpu>) makes retrained trials (resumes,
requeues) skip their compile. See regnet_jax/sweep/trials.py and benchmarks/trial_cost.py.

--reuse_from=DIR (repeatable) names workdirs of the sweep the config's `reuse` declares (the exercise sweeps declare
their base sweep): a trial whose model that sweep already trained with the same recipe is recorded from there,
marked `reused_from`, instead of trained again.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from regnet_jax import runtime
from regnet_jax.sweep.runner import ON_ERROR, SweepError, parse_shard, plan_trials, run_sweep
from regnet_jax.sweep.sampling import RegimeError
from regnet_jax.sweep.spaces import SpaceError
from regnet_jax.sweep.trials import TRIAL_PROCESSES, compilation_cache_dir, make_trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "sweep config file (configs/sweeps/*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for results.jsonl and per-trial training dirs")
_SHARD = flags.DEFINE_string("shard", "0/1", "I/N: run only the trials i with i % N == I")
_PLAN = flags.DEFINE_bool("plan", False, "print the sampled trials and exit without training")
_TRIAL_PROCESS = flags.DEFINE_enum("trial_process", "inprocess", TRIAL_PROCESSES,
                                   "inprocess: all trials in this process; subprocess: one child process per trial")
_ON_ERROR = flags.DEFINE_enum("on_trial_error", "stop", ON_ERROR,
                              "stop: a failing trial ends the sweep; skip: log it, go on, exit non-zero at the end")
_REUSE = flags.DEFINE_multi_string("reuse_from", [], "workdir(s) of the config's reuse sweep whose finished "
                                   "trials of the same model and recipe stand for this sweep's")
_CACHE = flags.DEFINE_string("compilation_cache", "auto",
                             "persistent XLA compilation cache: auto (user cache dir), none, or a directory")


def main(argv):
  try:
    _main(argv)
  except (SweepError, SpaceError, RegimeError) as e:
    # A sweep that cannot run as asked, or trials that failed: say what and how to fix, without a traceback.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config, shard = _CONFIG.value, parse_shard(_SHARD.value)
  if _PLAN.value:
    trials = plan_trials(config)
    for t in trials:
      s = t.sample
      mark = "*" if shard.owns(t.index) else " "
      print(f"{mark} {t.index:4d} {t.trial_id:<18} {s.flops / 1e6:8.2f} MF {s.params / 1e6:6.3f} M params  "
            f"d={list(s.spec.depths)} w={list(s.spec.widths)} g={list(s.spec.group_ws)} b={list(s.spec.bot_muls)}")
    total = sum(t.sample.flops for t in trials if shard.owns(t.index))
    print(f"{len(trials)} trials; shard {shard.index}/{shard.count} (*): {total / 1e6:.1f} MF in total")
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (it holds results.jsonl)")
  cache = compilation_cache_dir(_CACHE.value)
  train_fn = make_trainer(_TRIAL_PROCESS.value, cache)  # in-process imports JAX here: --plan needs none
  logging.info("trials run %s; compilation cache: %s", _TRIAL_PROCESS.value, cache or "off")
  run_sweep(config, _WORKDIR.value, train_fn, shard, log=logging.info, on_error=_ON_ERROR.value,
            reuse_from=_REUSE.value)


if __name__ == "__main__":
  runtime.reexec_with_allocator()
  app.run(main)
