"""Fashion-MNIST from its four IDX files (Debian's `dataset-fashion-mnist` package or any directory).

Parsing all four files takes well under a second, so the whole dataset lives in
memory and batches are plain numpy indexing: no TFDS, no TensorFlow.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from regnet_jax.data import idx
from regnet_jax.data.errors import CorruptDatasetError, DatasetNotFoundError

DEFAULT_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
# split -> (images file, labels file), as the upstream project names them.
FILES: dict[str, tuple[str, str]] = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _find_file(directory: pathlib.Path, gz_name: str) -> pathlib.Path | None:
  """The file as shipped (.gz) or as a user may have unpacked it (no .gz)."""
  for candidate in (directory / gz_name, directory / gz_name.removesuffix(".gz")):
    if candidate.is_file():
      return candidate
  return None


def find_idx_dir(data_dir: str | os.PathLike | None, *, how_to_get: str = "") -> pathlib.Path | None:
  """Returns the directory holding all four IDX files, or None if it holds none of them.

  `data_dir` is searched when given, the Debian package's directory otherwise.
  A directory with only some of the files is an error rather than a silent
  fall-back to another source: the user evidently meant to use it.
  """
  directory = pathlib.Path(data_dir) if data_dir is not None else DEFAULT_DIR
  names = [name for pair in FILES.values() for name in pair]
  found = {name: _find_file(directory, name) for name in names}
  missing = [name for name, path in found.items() if path is None]
  if not missing:
    return directory
  if len(missing) < len(names):
    raise DatasetNotFoundError(
      f"Fashion-MNIST directory {directory} lacks {missing} (it has the other IDX files). {how_to_get}"
    )
  return None


def split_size(directory: pathlib.Path, split: str) -> int:
  """Number of examples in a split, read from the labels file's header only."""
  return idx.read_idx_shape(_split_paths(directory, split)[1])[0]


def _split_paths(directory: pathlib.Path, split: str) -> tuple[pathlib.Path, pathlib.Path]:
  if split not in FILES:
    raise ValueError(f"unknown Fashion-MNIST split {split!r}; known: {sorted(FILES)}")
  paths = tuple(_find_file(directory, name) for name in FILES[split])
  if None in paths:
    raise DatasetNotFoundError(f"{directory} lacks the IDX files {FILES[split]} of split {split!r}")
  return paths  # type: ignore[return-value]


def load_split(directory: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 (N, 28, 28, 1), labels int32 (N,)) of one split, validated."""
  images_path, labels_path = _split_paths(directory, split)
  images, labels = idx.read_idx(images_path), idx.read_idx(labels_path)
  if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
    raise CorruptDatasetError(
      f"{images_path}: expected uint8 images of shape (N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}), "
      f"got {images.dtype} {images.shape}; re-install or re-download the file"
    )
  if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
    raise CorruptDatasetError(
      f"{labels_path}: expected {images.shape[0]} uint8 labels to match {images_path}, got "
      f"{labels.dtype} {labels.shape}; re-install or re-download the files"
    )
  if labels.size and labels.max() >= NUM_CLASSES:
    raise CorruptDatasetError(f"{labels_path}: label {labels.max()} is outside [0, {NUM_CLASSES})")
  return images[..., None], labels.astype(np.int32)
