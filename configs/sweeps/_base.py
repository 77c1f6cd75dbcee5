"""Shared by the exercise sweeps: another sweep config of this directory, loaded by name (configs/ is no package).

`derived(base_name, name, spaces)` keeps the base sweep's regime, seed and training recipe and replaces its name
and spaces, so an exercise runs in whatever proxy regime the base sweep defines (pass the base as the config
argument: --config=configs/sweeps/vionet.py:fashion_mnist_cpu). It also declares the base sweep as the one whose
trials may stand for the exercise's reference spaces (the same models, sampled from the same seeded streams, trained
with the same recipe): `--reuse_from=<base workdir>` records them from there instead of training them again.
"""

import os

import ml_collections

from regnet_jax.config_files import load_module
from regnet_jax.sweep.runner import train_fingerprint

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name: str) -> ml_collections.ConfigDict:
  path = os.path.join(HERE, f"{name}.py")
  if not os.path.exists(path):
    known = sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and not f.startswith("_"))
    raise FileNotFoundError(f"no sweep config {path}; the base sweep must be one of {known}")
  return load_module(path).get_config()


def derived(base_name: str, name: str, spaces: dict) -> ml_collections.ConfigDict:
  c = load(base_name)
  base_sweep = c.name
  c.name = f"{name}@{base_sweep}"  # another base gives another sweep name: their results never mix in one workdir
  c.spaces = ml_collections.ConfigDict(spaces)
  # Fixed here, before any command-line override: an overridden recipe no longer matches and reuses nothing.
  c.reuse = ml_collections.ConfigDict({"sweep": base_sweep, "train_fingerprint": train_fingerprint(c.train)})
  return c
