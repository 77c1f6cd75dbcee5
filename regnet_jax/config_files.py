"""Loading a config file by path: configs/ is no package, so a config that builds on another (regnety32 on
regnetx32, the exercise sweeps on a base sweep) loads it with `sibling(__file__, "other.py")`. Imports no JAX:
`python -m regnet_jax.sweep --plan` reads configs without it."""

from __future__ import annotations

import importlib.util
import os
import types


def load_module(path: str) -> types.ModuleType:
  """The Python file at `path` as a fresh module (its own name, so two configs never share one)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config file {path}")
  name = "config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(file: str, filename: str) -> types.ModuleType:
  """The config `filename` in the directory of the config `file` (pass `__file__`)."""
  return load_module(os.path.join(os.path.dirname(os.path.abspath(file)), filename))
