"""Datasets for regnet_jax: host sources and batch iterators; on-device preprocessing is in `.preprocess`.

The training loop uses only what is re-exported here and in `preprocess`:
`dataset_info`, `steps_per_epoch`, `make_train_batches`, `make_eval_batches`,
and `train_preprocess` / `eval_preprocess` inside its jitted steps. Importing
this package imports neither jax, TFDS nor grain (they load when needed).
"""

from regnet_jax.data.errors import CorruptDatasetError, DatasetNotFoundError
from regnet_jax.data.host_transforms import InceptionCrop, Resize, ResizeCenterCrop
from regnet_jax.data.info import DATASETS, DatasetInfo, DatasetSpec, dataset_spec
from regnet_jax.data.pipeline import (
  EvalOrder,
  TrainOrder,
  eval_resize_size,
  host_crops_for,
  make_eval_batches,
  make_train_batches,
  steps_per_epoch,
)
from regnet_jax.data.catalog import as_spec, resolve
from regnet_jax.data.sources import ArraySource, Source, RecordSource, dataset_info, open_source

__all__ = [
  "ArraySource",
  "CorruptDatasetError",
  "DATASETS",
  "DatasetInfo",
  "DatasetNotFoundError",
  "DatasetSpec",
  "EvalOrder",
  "InceptionCrop",
  "Resize",
  "ResizeCenterCrop",
  "Source",
  "RecordSource",
  "TrainOrder",
  "as_spec",
  "dataset_info",
  "dataset_spec",
  "eval_resize_size",
  "host_crops_for",
  "make_eval_batches",
  "make_train_batches",
  "open_source",
  "resolve",
  "steps_per_epoch",
]
