"""`--config.dataset` -> DatasetSpec: a built-in name, `folder:PATH` or `tfds:NAME[:VERSION]`.

Built-in datasets have static facts (`info.DATASETS`); an image folder's and a TFDS dataset's facts come from the
data itself (classes from the train split's folders or the TFDS label feature, channels from the images or the
image feature). Normalisation defaults to ImageNet's statistics, what converted weights expect; compute a
dataset's own with `python -m regnet_jax.data.stats DATASET` and pass them as --config.mean / --config.std.
"""

from __future__ import annotations

import dataclasses
import os

from regnet_jax.data import folder, tfds_datasets
from regnet_jax.data.errors import DatasetNotFoundError
from regnet_jax.data.info import (
  IMAGENET_GREY_MEAN,
  IMAGENET_GREY_STD,
  IMAGENET_MEAN,
  IMAGENET_STD,
  DatasetSpec,
  dataset_spec,
)

FOLDER_PREFIX = "folder:"
FOLDER_SPLITS = ("train", "val")


def imagenet_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (IMAGENET_GREY_MEAN, IMAGENET_GREY_STD)


def _check_channels(channels: int) -> None:
  if channels not in (0, 1, 3):
    raise ValueError(f"config.channels={channels!r} is invalid: 0 (from the data), 1 (grey) or 3 (RGB)")


def _folder_spec(root: str, *, train_split: str, eval_split: str, channels: int, skip_bad_images: bool):
  root = os.path.abspath(os.path.expanduser(root))
  if not root or not os.path.isdir(root):
    raise DatasetNotFoundError(
        f"image folder {root!r} (from --config.dataset=folder:PATH) is not a directory; give the folder that "
        f"holds the {train_split or FOLDER_SPLITS[0]}/ and {eval_split or FOLDER_SPLITS[1]}/ split folders")
  train_split, eval_split = train_split or FOLDER_SPLITS[0], eval_split or FOLDER_SPLITS[1]
  index = folder.scan_split(root, train_split, None, skip_bad_images=skip_bad_images)
  # The eval split is checked now too (unknown classes, bad files), before any workdir is written.
  folder.scan_split(root, eval_split, index.classes, skip_bad_images=skip_bad_images)
  channels = channels or folder.detect_channels(index.paths)
  mean, std = imagenet_stats(channels)
  return DatasetSpec(
      name=f"{FOLDER_PREFIX}{root}", num_classes=len(index.classes), channels=channels, mean=mean, std=std,
      train_split=train_split, eval_split=eval_split, variable_size=True,
      how_to_get=f"Lay the images out as {root}/{train_split}/CLASS/*.jpg and {root}/{eval_split}/CLASS/*.jpg.",
      kind="folder", location=root, classes=index.classes, skip_bad_images=skip_bad_images)


def _tfds_spec(name: str, data_dir: str | None, *, train_split: str, eval_split: str, channels: int):
  if not name:
    raise ValueError("config.dataset='tfds:' needs a dataset name: tfds:NAME or tfds:NAME:VERSION")
  facts = tfds_datasets.facts(name, data_dir)
  channels = channels or facts.channels
  mean, std = imagenet_stats(channels)
  return DatasetSpec(
      name=f"{tfds_datasets.PREFIX}{name}", num_classes=len(facts.classes), channels=channels, mean=mean, std=std,
      train_split=train_split or "train", eval_split=eval_split or tfds_datasets.default_eval_split(facts),
      variable_size=facts.variable_size, how_to_get=tfds_datasets.how_to_prepare(name, data_dir),
      kind="tfds", location=name, classes=facts.classes)


def resolve(dataset: str, *, data_dir: str | os.PathLike | None = None, train_split: str = "", eval_split: str = "",
            channels: int = 0, skip_bad_images: bool = False) -> DatasetSpec:
  """The DatasetSpec of `dataset`; "" split names and channels=0 mean the dataset's own."""
  _check_channels(channels)
  data_dir = os.fspath(data_dir) if data_dir else None
  if dataset.startswith(FOLDER_PREFIX):
    return _folder_spec(dataset[len(FOLDER_PREFIX):], train_split=train_split, eval_split=eval_split,
                        channels=channels, skip_bad_images=skip_bad_images)
  if dataset.startswith(tfds_datasets.PREFIX):
    return _tfds_spec(dataset[len(tfds_datasets.PREFIX):], data_dir, train_split=train_split, eval_split=eval_split,
                      channels=channels)
  spec = dataset_spec(dataset)
  if channels and channels != spec.channels:
    raise ValueError(f"config.channels={channels} does not fit {dataset}, which has {spec.channels}-channel "
                     "images; leave it at 0")
  return dataclasses.replace(spec, train_split=train_split or spec.train_split,
                             eval_split=eval_split or spec.eval_split)


def as_spec(dataset: str | DatasetSpec, data_dir: str | os.PathLike | None = None) -> DatasetSpec:
  """A resolved spec passes through; a string is resolved with default options."""
  return dataset if isinstance(dataset, DatasetSpec) else resolve(dataset, data_dir=data_dir)
