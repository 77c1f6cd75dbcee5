"""Any TFDS image-classification dataset already prepared in a data_dir: `--config.dataset=tfds:NAME[:VERSION]`.

The facts (classes, channels, fixed or variable size, splits) come from the dataset's own metadata. Records are
read with random access, which the pipeline's (seed, step) -> batch order needs: array_record builds through
`tfds.data_source`; tfrecord builds (TFDS's default format) through `TfrecordRecords`, which indexes the record
offsets of each shard once and decodes with the same numpy feature decoder that `tfds.data_source` uses, so
neither format needs TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any, Sequence

import numpy as np

from regnet_jax.data.errors import CorruptDatasetError, DatasetNotFoundError

PREFIX = "tfds:"
_HEADER = struct.Struct("<Q")  # record length; followed by a 4-byte CRC of it, the data, a 4-byte CRC of the data


def how_to_prepare(name: str, data_dir: str | None) -> str:
  return (f"Prepare it on a machine with internet and tensorflow (pip install tensorflow-cpu): `tfds build "
          f"{name.split(':')[0]} --file_format=array_record --data_dir={data_dir or '~/tensorflow_datasets'}` (or a "
          "tfrecord build), then pass that directory as --config.data_dir.")


def builder(name: str, data_dir: str | None):
  """The TFDS builder of `name` ("NAME" or "NAME:VERSION") without downloading anything."""
  import tensorflow_datasets as tfds  # deferred: ~2 s import, only for TFDS datasets

  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises its DatasetNotFoundError or ValueError for unknown names/versions
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DatasetNotFoundError(
        f"TFDS has no dataset {name!r} ({first}): it is neither a registered TFDS dataset nor prepared in "
        f"data_dir={data_dir or '~/tensorflow_datasets'}. Check the name (`tfds.list_builders()`) and version, "
        f"and --config.data_dir. {how_to_prepare(name, data_dir)}") from e


@dataclasses.dataclass(frozen=True)
class TfdsFacts:
  """What regnet_jax needs from a TFDS dataset's metadata."""

  classes: tuple[str, ...]
  channels: int
  variable_size: bool
  splits: tuple[str, ...]  # as prepared; empty when not prepared (or under tfds.testing.mock_data)


def facts(name: str, data_dir: str | None) -> TfdsFacts:
  """Classes, channels and sizes from the features of an image-classification dataset (`image`, `label`)."""
  import tensorflow_datasets as tfds

  info = builder(name, data_dir).info
  features = info.features
  keys = list(features.keys()) if hasattr(features, "keys") else []
  image, label = (features[k] if k in keys else None for k in ("image", "label"))
  if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
    raise ValueError(
        f"TFDS dataset {name!r} is not an image-classification dataset regnet_jax can read: it needs an `image` "
        f"(tfds.features.Image) and a `label` (tfds.features.ClassLabel) feature; it has {features}")
  height, width, channels = image.shape
  if channels not in (1, 3, 4, None):
    raise ValueError(f"TFDS dataset {name!r} has {channels}-channel images; regnet_jax reads 1, 3 or 4 (RGBA)")
  return TfdsFacts(classes=tuple(label.names), channels=1 if channels == 1 else 3,
                   variable_size=height is None or width is None, splits=tuple(info.splits.keys()))


def default_eval_split(f: TfdsFacts) -> str:
  for split in ("validation", "test", "val"):
    if split in f.splits:
      return split
  return "test" if f.splits else "validation"


def open_records(name: str, split: str, data_dir: str | None) -> Sequence[dict[str, Any]]:
  """Random-access records of a prepared split: array_record through TFDS, tfrecord through our index."""
  import tensorflow_datasets as tfds

  b = builder(name, data_dir)
  if b.is_prepared() and b.info.file_format is not None and b.info.file_format.value == "tfrecord":
    if split not in b.info.splits:
      raise DatasetNotFoundError(f"TFDS dataset {name!r} in {b.data_dir} has no split {split!r}; it has "
                                 f"{sorted(b.info.splits.keys())}: pass --config.train_split / eval_split")
    paths = [os.fspath(p) for p in b.info.splits[split].filepaths]
    return TfrecordRecords.index(paths, b.info.features)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:
    where = b.data_dir if b.is_prepared() else f"data_dir={data_dir or '~/tensorflow_datasets'}"
    has = f" (prepared splits: {sorted(b.info.splits.keys())})" if b.is_prepared() else ""
    raise DatasetNotFoundError(f"TFDS dataset {name!r} split {split!r} is not prepared in {where}{has}. "
                               f"{how_to_prepare(name, data_dir)}") from e


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """HWC uint8 with 1, 3 or 4 channels -> `channels` (1 or 3): grey repeated, alpha dropped, colour to luma."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 4:
    image = image[..., :3]
  if image.shape[-1] == channels:
    return image
  if channels == 3:
    return np.repeat(image, 3, axis=-1)
  # ITU-R 601 luma, what PIL's convert("L") computes.
  luma = image.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
  return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelRecords:
  """records[i] with its image converted to `channels` (picklable wrapper for grain's workers)."""

  records: Sequence[dict[str, Any]]
  channels: int

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> dict[str, Any]:
    example = self.records[i]
    return {"image": to_channels(np.asarray(example["image"]), self.channels), "label": example["label"]}


@dataclasses.dataclass(frozen=True, eq=False)
class TfrecordRecords:
  """Random access into TFRecord shards: (file, offset, length) of every record, decoded with TFDS's features."""

  paths: tuple[str, ...]
  locations: np.ndarray  # int64 (N, 3): shard, data offset, data length
  features: Any  # tfds FeaturesDict: deserialize_example_np(bytes) -> numpy example

  @classmethod
  def index(cls, paths: Sequence[str], features: Any) -> "TfrecordRecords":
    rows = []
    for shard, path in enumerate(paths):
      size = os.path.getsize(path)
      with open(path, "rb") as f:
        offset = 0
        while offset < size:
          header = f.read(12)
          if len(header) < 12:
            raise CorruptDatasetError(f"TFRecord file {path} is truncated at byte {offset} (a partial record "
                                      "header); rebuild the dataset")
          (length,) = _HEADER.unpack_from(header)
          if offset + 16 + length > size:
            raise CorruptDatasetError(f"TFRecord file {path} is truncated: a record at byte {offset} claims "
                                      f"{length} bytes, the file ends at {size}; rebuild the dataset")
          rows.append((shard, offset + 12, length))
          offset += 16 + length
          f.seek(offset)
    return cls(paths=tuple(paths), locations=np.asarray(rows, np.int64).reshape(-1, 3), features=features)

  def __len__(self) -> int:
    return len(self.locations)

  def __getitem__(self, i: int) -> dict[str, Any]:
    shard, offset, length = (int(v) for v in self.locations[i])
    with open(self.paths[shard], "rb") as f:
      f.seek(offset)
      data = f.read(length)
    return self.features.deserialize_example_np(data)
