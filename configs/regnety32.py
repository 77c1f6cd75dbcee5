"""d2l RegNetX32's squeeze-excitation twin (RegNetY32) with the same Fashion-MNIST recipe."""

import importlib.util
import os


def _regnetx32():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regnetx32.py")
  spec = importlib.util.spec_from_file_location("regnetx32_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  c = _regnetx32().get_config(arg)
  c.model = "regnety32"
  return c
