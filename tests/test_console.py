"""The console filter: our INFO lines show, third-party INFO does not, warnings from anyone do."""
import logging as std_logging
import os

import pytest
from absl import flags, logging

from regnet_jax import console

PACKAGE = os.path.dirname(console.__file__)


def _record(level, pathname):
  return std_logging.LogRecord("absl", level, pathname, 1, "msg", None, None)


@pytest.mark.parametrize("level,path,shown", [
    (std_logging.INFO, os.path.join(PACKAGE, "train.py"), True),
    (std_logging.INFO, os.path.join(PACKAGE, "sweep", "runner.py"), True),
    (std_logging.INFO, "/site-packages/orbax/checkpoint/checkpoint_manager.py", False),
    (std_logging.DEBUG, "/site-packages/jax/_src/dispatch.py", False),
    (std_logging.WARNING, "/site-packages/orbax/checkpoint/checkpoint_manager.py", True),
    (std_logging.ERROR, "/site-packages/grain/_src/python/data_loader.py", True),
    # A sibling directory whose name merely starts with the package's must not pass.
    (std_logging.INFO, PACKAGE + "_extras/x.py", False),
])
def test_own_info_only(level, path, shown):
  assert console.OwnInfoOnly().filter(_record(level, path)) is shown


def test_show_own_info_installs_the_filter_once_and_respects_explicit_verbosity():
  # Global state, all restored at the end: later tests (caplog at INFO) must find absl as this one found it.
  was_parsed, absl_level = flags.FLAGS.is_parsed(), logging.get_absl_logger().level
  flags.FLAGS.mark_as_parsed()
  handler = logging.get_absl_handler()
  saved_filters = list(handler.filters)
  try:
    console.show_own_info()
    console.show_own_info()
    assert sum(isinstance(f, console.OwnInfoOnly) for f in handler.filters) == 1
    assert logging.get_verbosity() == logging.INFO
    for f in list(handler.filters):
      handler.removeFilter(f)
    flags.FLAGS["verbosity"].present = 1  # as if `--verbosity=...` was on the command line
    console.show_own_info()
    assert not any(isinstance(f, console.OwnInfoOnly) for f in handler.filters)
  finally:
    flags.FLAGS["verbosity"].present = 0
    for f in list(handler.filters):
      handler.removeFilter(f)
    for f in saved_filters:
      handler.addFilter(f)
    if not was_parsed:
      flags.FLAGS.unparse_flags()
    logging.get_absl_logger().setLevel(absl_level)
