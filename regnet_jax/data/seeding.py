"""Deterministic randomness of the host pipeline.

Everything random on the host is a pure function of (seed, epoch[, example
index]), never of iteration history, so a run resumed at any step reproduces
the uninterrupted run exactly, whatever the batch size or process count.
Streams are tagged so the shuffle and the crops never share a seed sequence.
"""

from __future__ import annotations

import numpy as np

_SHUFFLE_STREAM = 0
_EXAMPLE_STREAM = 1


def _check_non_negative(**values: int) -> None:
  for name, value in values.items():
    if value < 0:
      raise ValueError(f"{name} must be a non-negative integer (it seeds numpy's SeedSequence), got {value}")


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the examples."""
  _check_non_negative(seed=seed, epoch=epoch)
  return np.random.default_rng([seed, _SHUFFLE_STREAM, epoch]).permutation(num_examples)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """Generator for the random host transform of example `index` in epoch `epoch`.

  A new crop every epoch, the same crop for the same (seed, epoch, example).
  """
  _check_non_negative(seed=seed, epoch=epoch, index=index)
  return np.random.default_rng([seed, _EXAMPLE_STREAM, epoch, int(index)])
