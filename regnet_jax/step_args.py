"""The command-line flags that say which step a benchmark runs: model, batch, input geometry, classes and mode.

Shared by `regnet_jax.bench`, `regnet_jax.torch_reference` and the profilers in benchmarks/, so that one
configuration is spelled the same way in all of them (and their outputs can be checked against each other).
"""
from __future__ import annotations

import argparse


def add_step_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
  p.add_argument("--model", required=True, help="zoo name")
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--mode", choices=("train", "eval"), default="train")
  return p
