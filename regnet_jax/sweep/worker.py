"""python -m regnet_jax.sweep.worker --train_config=PKL --workdir=DIR --result=JSON

One sweep trial in a process of its own (`--trial_process=subprocess`, see trials.SubprocessTrainer): trains the
pickled training config with `train.train_and_evaluate` in DIR and writes its metrics to JSON (written last, by
rename: a result file exists only for a trial that returned). Exit codes: 0 with a result (finished or preempted),
2 for the trainer's user errors (bad config, NaN loss, ...), anything else for a crash.
"""

from __future__ import annotations

import json
import os
import pickle
import sys

from absl import app, flags

from regnet_jax import runtime

_CONFIG = flags.DEFINE_string("train_config", None, "pickled ml_collections.ConfigDict of the trial")
_WORKDIR = flags.DEFINE_string("workdir", None, "the trial's training directory")
_RESULT = flags.DEFINE_string("result", None, "where to write the metrics (JSON)")
flags.mark_flags_as_required(["train_config", "workdir", "result"])


def _json_value(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return str(v)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with open(_CONFIG.value, "rb") as f:
    config = pickle.load(f)
  from regnet_jax import train  # JAX reads JAX_COMPILATION_CACHE_DIR from the environment the runner set
  try:
    metrics = train.train_and_evaluate(config, _WORKDIR.value)
  except train.USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  tmp = _RESULT.value + ".tmp"
  with open(tmp, "w") as f:
    json.dump({k: v if isinstance(v, (bool, int, float, str)) else _json_value(v) for k, v in metrics.items()}, f)
  os.replace(tmp, _RESULT.value)


if __name__ == "__main__":
  runtime.reexec_with_allocator()
  app.run(main)
