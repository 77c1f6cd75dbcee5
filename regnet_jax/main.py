"""Entry point: `python -m regnet_jax.main --config=configs/regnetx32.py --workdir=DIR [--config.X=...]`.

Parses flags and calls `train_and_evaluate`; nothing else lives here.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from regnet_jax import console, runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file, e.g. configs/regnetx32.py",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and plots; rerun to resume")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from regnet_jax import distributed, train
  console.show_own_info()
  try:
    distributed.initialize_from_env()
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.USER_ERRORS as e:
    # Bad input: say what was wrong and how to fix it, without a traceback; nothing already saved is lost.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  runtime.reexec_with_allocator()
  app.run(main)
