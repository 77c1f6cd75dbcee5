"""Index-based, deterministic host sources: `batch(indices)` -> uint8 images and int32 labels.

Two kinds: `ArraySource` (whole dataset in memory; Fashion-MNIST from IDX files)
and `RecordSource` (random access into records decoded on the host: a TFDS
build through `tfds.data_source` or our TFRecord index, or an image folder;
variable-sized images are cropped on the host). `open_source` picks one for a
dataset (a built-in name, `folder:PATH`, `tfds:NAME`, or a resolved DatasetSpec)
and split.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from regnet_jax.data import fashion_mnist, folder, tfds_datasets
from regnet_jax.data.errors import DatasetNotFoundError
from regnet_jax.data.host_transforms import HostTransform
from regnet_jax.data.info import DatasetInfo, DatasetSpec
from regnet_jax.data.catalog import as_spec
from regnet_jax.data.seeding import example_rng

SPLIT_KINDS = ("train", "eval")


class Source(Protocol):
  """Host-side, deterministic, index-based access to one split."""

  @property
  def num_examples(self) -> int: ...

  def batch(self, indices: np.ndarray, *, epoch: int = 0) -> dict[str, np.ndarray]:
    """{"image": uint8 (B, H, W, C), "label": int32 (B,)} for the given example indices.

    `epoch` only matters to sources with a random host transform (a new crop every epoch).
    """
    ...


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
  """A split held in memory as arrays."""

  images: np.ndarray  # uint8 (N, H, W, C)
  labels: np.ndarray  # int32 (N,)

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
    if self.labels.shape != self.images.shape[:1]:
      raise ValueError(f"{self.labels.shape[0]} labels for {self.images.shape[0]} images")

  @property
  def num_examples(self) -> int:
    return self.images.shape[0]

  def batch(self, indices: np.ndarray, *, epoch: int = 0) -> dict[str, np.ndarray]:
    del epoch  # no random host transform
    return {"image": self.images[indices], "label": self.labels[indices].astype(np.int32)}


@dataclasses.dataclass(frozen=True, eq=False)
class RecordSource:
  """A split read example by example: a TFDS data source, TFRecord index or image folder.

  `records` only needs `len()` and `records[i] -> {"image": HWC uint8, "label": int}`,
  which also keeps the source picklable for grain's worker processes.
  """

  records: Sequence[Mapping[str, Any]]
  transform: HostTransform | None = None
  seed: int = 0  # seeds the random transform, per (epoch, example)

  @property
  def num_examples(self) -> int:
    return len(self.records)

  def _image(self, example: Mapping[str, Any], index: int, epoch: int) -> np.ndarray:
    image = np.asarray(example["image"])
    if self.transform is None:
      return image
    rng = example_rng(self.seed, epoch, index) if self.transform.random else None
    return self.transform(image, rng)

  def batch(self, indices: np.ndarray, *, epoch: int = 0) -> dict[str, np.ndarray]:
    # One record at a time: tfds.testing.mock_data's `__getitems__` is broken in
    # tfds 4.9.10 (it is set on a MagicMock without `self`), and with grain
    # workers per-record reads are not the bottleneck; decoding is.
    images, labels = [], []
    for index in np.asarray(indices).tolist():
      example = self.records[index]
      images.append(self._image(example, index, epoch))
      labels.append(example["label"])
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
      raise ValueError(
        f"images of different shapes {sorted(shapes)} cannot be batched; variable-sized datasets need "
        "a host transform (InceptionCrop / ResizeCenterCrop)"
      )
    return {"image": np.stack(images).astype(np.uint8, copy=False), "label": np.asarray(labels, np.int32)}


def _idx_dir(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> pathlib.Path | None:
  """Fashion-MNIST's IDX directory (data_dir if given, else Debian's), or None: use TFDS."""
  if spec.name != "fashion_mnist":
    return None
  return fashion_mnist.find_idx_dir(data_dir, how_to_get=spec.how_to_get)


def _split_name(spec: DatasetSpec, kind: str) -> str:
  if kind not in SPLIT_KINDS:
    raise ValueError(f"unknown split kind {kind!r}; known: {SPLIT_KINDS}")
  return spec.train_split if kind == "train" else spec.eval_split


def _open_tfds(spec: DatasetSpec, split: str, data_dir: str | os.PathLike | None, download: bool):
  """Opens a TFDS array_record build; builds it first only when that can work here.

  The first attempt never downloads, so a prepared dataset (or
  `tfds.testing.mock_data`) opens without touching the network. Building needs
  TensorFlow: without it we fail at once with instructions instead of after
  TFDS has fetched the files. TFDS's own exception stays chained to ours.
  """
  import tensorflow_datasets as tfds  # deferred: the Fashion-MNIST IDX path needs no TFDS

  where = f"data_dir={os.fspath(data_dir) if data_dir is not None else 'TFDS default (~/tensorflow_datasets)'}"
  missing = f"dataset {spec.name!r} split {split!r} is not prepared as array_record in {where}"
  if spec.name == "fashion_mnist":  # say where the IDX files were looked for first
    missing = f"no Fashion-MNIST IDX files in {os.fspath(data_dir or fashion_mnist.DEFAULT_DIR)}; {missing}"
  try:
    return tfds.data_source(spec.name, split=split, data_dir=data_dir, download=False)
  except Exception as not_prepared:  # TFDS signals "absent" with several exception types
    if not download:
      raise DatasetNotFoundError(f"{missing}. {spec.how_to_get}") from not_prepared
  if importlib.util.find_spec("tensorflow") is None:
    raise DatasetNotFoundError(
      f"{missing}, and preparing it with TFDS needs tensorflow, which is not installed. {spec.how_to_get}"
    )
  try:
    return tfds.data_source(spec.name, split=split, data_dir=data_dir, download=True)
  except Exception as e:
    raise DatasetNotFoundError(
      f"{missing}, and TFDS could not download/prepare it ({type(e).__name__}: {e}). {spec.how_to_get}"
    ) from e


def split_records(spec: DatasetSpec, split: str, data_dir: str | os.PathLike | None, download: bool) -> Sequence:
  """Random-access records of a folder or TFDS split, images converted to the spec's channels."""
  if spec.kind == "folder":
    # The eval split takes the train split's classes: label i means the same class in both.
    classes = None if split == spec.train_split else spec.classes
    index = folder.scan_split(spec.location, split, classes, skip_bad_images=spec.skip_bad_images)
    return folder.FolderRecords(index, spec.channels)
  if spec.kind == "tfds":
    return tfds_datasets.ChannelRecords(tfds_datasets.open_records(spec.location, split,
                                                                   os.fspath(data_dir) if data_dir else None),
                                        spec.channels)
  return _open_tfds(spec, split, data_dir, download)


def open_source(
  dataset: str | DatasetSpec,
  kind: str,
  *,
  data_dir: str | os.PathLike | None = None,
  transform: HostTransform | None = None,
  seed: int = 0,
  download: bool = True,
) -> Source:
  """Opens split `kind` ("train" or "eval") of `dataset`.

  Fashion-MNIST comes from IDX files when `data_dir` (or, without one,
  /usr/share/datasets/fashion-mnist) holds them, from TFDS otherwise; image
  folders from their files; every other dataset from its TFDS build in
  `data_dir`. `transform` is required for variable-sized datasets and applied
  per example.
  """
  spec = as_spec(dataset, data_dir)
  split = _split_name(spec, kind)
  if spec.variable_size and transform is None:
    raise ValueError(f"{spec.name} has images of varying sizes: pass a host transform (InceptionCrop / "
                     "ResizeCenterCrop / Resize)")
  directory = _idx_dir(spec, data_dir)
  if directory is not None:
    if transform is not None:
      raise ValueError("in-memory sources take no host transform; resize on the device instead")
    return ArraySource(*fashion_mnist.load_split(directory, split))
  return RecordSource(split_records(spec, split, data_dir, download), transform=transform, seed=seed)


def dataset_info(dataset: str | DatasetSpec, data_dir: str | os.PathLike | None = None, *,
                 download: bool = True) -> DatasetInfo:
  """Static facts of `dataset` plus the example counts of the data found for it."""
  spec = as_spec(dataset, data_dir)
  directory = _idx_dir(spec, data_dir)
  if directory is not None:  # header reads only: milliseconds
    num_train = fashion_mnist.split_size(directory, spec.train_split)
    num_eval = fashion_mnist.split_size(directory, spec.eval_split)
  else:
    num_train = len(split_records(spec, spec.train_split, data_dir, download))
    num_eval = len(split_records(spec, spec.eval_split, data_dir, download))
  return DatasetInfo(
    name=spec.name,
    num_classes=spec.num_classes,
    channels=spec.channels,
    num_train=num_train,
    num_eval=num_eval,
    mean=spec.mean,
    std=spec.std,
  )
