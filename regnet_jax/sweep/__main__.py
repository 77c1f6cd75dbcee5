"""python -m regnet_jax.sweep --config=configs/sweeps/NAME.py --workdir=DIR [--shard=I/N] [--plan]

Samples the sweep's models, trains each with the sweep's recipe through `regnet_jax.train.train_and_evaluate`,
appends one JSON line per finished trial to DIR/results.jsonl and skips finished trials when run again.
`--plan` prints the trials (and this shard's share) without training.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from regnet_jax import runtime
from regnet_jax.sweep.runner import parse_shard, plan_trials, run_sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "sweep config file (configs/sweeps/*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for results.jsonl and per-trial training dirs")
_SHARD = flags.DEFINE_string("shard", "0/1", "I/N: run only the trials i with i % N == I")
_PLAN = flags.DEFINE_bool("plan", False, "print the sampled trials and exit without training")


def main(argv):
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
  from regnet_jax.train import train_and_evaluate  # imported here: --plan needs no JAX
  run_sweep(config, _WORKDIR.value, train_and_evaluate, shard, log=logging.info)


if __name__ == "__main__":
  runtime.reexec_with_malloc_tunables()
  app.run(main)
