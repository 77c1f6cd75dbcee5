"""What the command-line entry points write to the console: our INFO lines, everyone's warnings.

The main job logs its own progress at INFO (resume, init_from, per-epoch summaries), but absl's verbosity is one
process-wide threshold, and orbax, grain and JAX log at INFO through the same absl handler: 58 orbax lines in one
Fashion-MNIST run, interleaved with the progress bar. `show_own_info` keeps INFO for regnet_jax's modules only;
warnings and errors from anyone still show. An explicit `--verbosity=` on the command line is the user asking for
everything at that level, so it wins and nothing is filtered.
"""
from __future__ import annotations

import logging as std_logging
import os

from absl import flags, logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class OwnInfoOnly(std_logging.Filter):
  """Passes WARNING and above from anyone, lower levels only from files inside the regnet_jax package."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    return os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)


def show_own_info() -> None:
  """INFO for regnet_jax, WARNING for third parties, unless `--verbosity` was given (then absl's level rules)."""
  if flags.FLAGS["verbosity"].present:
    return
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, OwnInfoOnly) for f in handler.filters):
    handler.addFilter(OwnInfoOnly())
