"""Host batch iterators for training and evaluation.

Training: step s of the run is global batch s; epoch e = s // steps_per_epoch
visits the examples in `epoch_permutation(seed, e)` order and drops the
remainder. Each process yields only its contiguous slice of the global batch
(rows [p * B/P, (p + 1) * B/P)), ready for `jax.make_array_from_process_local_data`.
Because a batch is a pure function of its step, resuming at `start_step`
reproduces the uninterrupted run from that step on.

Evaluation: one ordered pass over the whole eval split; the last global batch is
padded to full size and every batch carries a boolean "mask", so each real
example is counted exactly once over all processes.

Batches are built by a step -> batch function, run in process, in grain's
prefetch threads, or in grain worker processes (`num_workers`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Callable, Iterator

import numpy as np

from regnet_jax.data.host_transforms import HostTransform, InceptionCrop, Resize, ResizeCenterCrop
from regnet_jax.data.info import DatasetSpec
from regnet_jax.data.catalog import as_spec
from regnet_jax.data.seeding import epoch_permutation
from regnet_jax.data.sources import Source, dataset_info, open_source

Batch = dict[str, np.ndarray]
# Training geometry of variable-sized images: random-sized crop, centre crop, or the whole image resized.
HOST_CROPS = ("inception", "center", "resize")
EVAL_CROPS = ("center", "resize")
# pycls / torchvision evaluate at 224 after resizing the shorter side to 256.
EVAL_RESIZE_RATIO = 256 / 224


def _check_processes(global_batch_size: int, process_index: int, process_count: int) -> None:
  if global_batch_size <= 0:
    raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index} and {process_count}")
  if global_batch_size % process_count:
    raise ValueError(
      f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}; "
      f"use a multiple of {process_count}"
    )


@dataclasses.dataclass(frozen=True)
class TrainOrder:
  """Which examples process `process_index` gets at each training step."""

  num_examples: int
  global_batch_size: int
  seed: int
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    _check_processes(self.global_batch_size, self.process_index, self.process_count)
    if self.global_batch_size > self.num_examples:
      raise ValueError(
        f"global_batch_size {self.global_batch_size} exceeds the {self.num_examples} training examples"
      )

  @property
  def steps_per_epoch(self) -> int:
    return self.num_examples // self.global_batch_size  # the remainder is dropped

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.process_count

  def epoch_of(self, step: int) -> int:
    return step // self.steps_per_epoch

  def local_rows(self, step: int, permutation: np.ndarray) -> np.ndarray:
    """This process's example indices at `step`, given its epoch's permutation."""
    start = (step % self.steps_per_epoch) * self.global_batch_size + self.process_index * self.local_batch_size
    return permutation[start : start + self.local_batch_size]


class _TrainBatchFn:
  """step -> this process's batch; remembers the current epoch's permutation.

  Recomputing a 1.28M-element permutation every step would cost ~20 ms; one
  cached epoch suffices because steps arrive in order. The cache is a single
  tuple, replaced atomically, so grain's prefetch threads may share it.
  """

  def __init__(self, order: TrainOrder, source: Source):
    self.order = order
    self.source = source
    self._cached: tuple[int, np.ndarray] | None = None

  def _permutation(self, epoch: int) -> np.ndarray:
    cached = self._cached
    if cached is None or cached[0] != epoch:
      cached = (epoch, epoch_permutation(self.order.seed, epoch, self.order.num_examples))
      self._cached = cached
    return cached[1]

  def __call__(self, step: int) -> Batch:
    epoch = self.order.epoch_of(step)
    return self.source.batch(self.order.local_rows(step, self._permutation(epoch)), epoch=epoch)


@dataclasses.dataclass(frozen=True)
class EvalOrder:
  """Which positions of the eval split process `process_index` gets in each eval batch."""

  num_examples: int
  global_batch_size: int
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    _check_processes(self.global_batch_size, self.process_index, self.process_count)

  @property
  def num_batches(self) -> int:
    return math.ceil(self.num_examples / self.global_batch_size)

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.process_count

  def local_positions(self, batch_index: int) -> np.ndarray:
    """Positions in the split; those >= num_examples are padding."""
    start = batch_index * self.global_batch_size + self.process_index * self.local_batch_size
    return np.arange(start, start + self.local_batch_size)


@dataclasses.dataclass(frozen=True)
class _EvalBatchFn:
  """batch index -> this process's eval batch, padded rows zeroed and masked out."""

  order: EvalOrder
  source: Source

  def __call__(self, batch_index: int) -> Batch:
    positions = self.order.local_positions(batch_index)
    mask = positions < self.order.num_examples
    # Padding rows re-read example 0 (then zeroed): the batch keeps a fixed shape
    # even when this process's whole slice is padding.
    batch = self.source.batch(np.where(mask, positions, 0))
    batch["image"][~mask] = 0
    batch["label"][~mask] = 0
    batch["mask"] = mask
    return batch


def _ensure_absl_flags_parsed() -> None:
  """grain's worker processes read grain's absl flags; outside `absl.app.run` they are unparsed."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # keep every flag at its default


def _iterate(
  batch_fn: Callable[[int], Batch], start: int, stop: int | None, *, num_workers: int, num_threads: int, prefetch: int
) -> Iterator[Batch]:
  """Yields batch_fn(start), batch_fn(start + 1), ... (forever when stop is None), in order.

  num_workers > 0: grain worker processes each build every num_workers-th batch.
  Otherwise, with prefetch > 0, grain builds up to `prefetch` batches ahead in
  `num_threads` threads of this process; with prefetch == 0 batches are built
  on demand in the caller's thread.
  """
  if min(num_workers, num_threads, prefetch) < 0:
    raise ValueError(f"num_workers, num_threads, prefetch must be >= 0, got {num_workers}, {num_threads}, {prefetch}")
  stop = sys.maxsize if stop is None else stop
  if num_workers == 0 and (prefetch == 0 or num_threads == 0):
    return (batch_fn(step) for step in range(start, stop))  # a generator: has close() like the grain path
  return _iterate_with_grain(batch_fn, start, stop, num_workers=num_workers, num_threads=num_threads, prefetch=prefetch)


def _iterate_with_grain(
  batch_fn: Callable[[int], Batch], start: int, stop: int, *, num_workers: int, num_threads: int, prefetch: int
) -> Iterator[Batch]:
  import grain  # deferred: ~1 s import, only needed for prefetching

  dataset = grain.MapDataset.range(start, stop).map(batch_fn).to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  )
  if num_workers > 0:
    _ensure_absl_flags_parsed()
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(prefetch, 1))
    )
  iterator = iter(dataset)
  try:
    for batch in iterator:
      # Workers hand over batches in shared memory; copying them into plain
      # arrays frees each segment at once (a memcpy, small next to decoding)
      # and gives consumers ordinary numpy arrays.
      yield {key: np.array(value) for key, value in batch.items()}
  finally:
    iterator.close()  # stops threads / worker processes when the consumer is done


def _train_transform(spec: DatasetSpec, host_crop: str, image_size: int) -> HostTransform | None:
  """Host crop for training; None for fixed-size datasets, which are resized on the device."""
  if host_crop not in HOST_CROPS:
    raise ValueError(f"unknown host_crop {host_crop!r}; known: {HOST_CROPS}")
  if not spec.variable_size:
    return None
  if host_crop == "inception":
    return InceptionCrop(image_size)
  if host_crop == "resize":
    return Resize(image_size)
  return ResizeCenterCrop(image_size, eval_resize_size(image_size))


def _eval_transform(spec: DatasetSpec, image_size: int, resize_size: int | None, eval_crop: str) -> HostTransform | None:
  """Host resize + centre crop (or plain resize) for evaluation; None for fixed-size datasets."""
  if eval_crop not in EVAL_CROPS:
    raise ValueError(f"unknown eval_crop {eval_crop!r}; known: {EVAL_CROPS}")
  if not spec.variable_size:
    return None
  if eval_crop == "resize":
    return Resize(image_size)
  return ResizeCenterCrop(image_size, resize_size if resize_size is not None else eval_resize_size(image_size))


def host_crops_for(spec: DatasetSpec, augment: str) -> tuple[str, str]:
  """(train host_crop, eval_crop) for a config's augment.

  Your own variable-sized data: augment=imagenet takes ImageNet's geometry (random-resized crop for training,
  resize + centre crop for evaluation); every other augment resizes the whole image on the host and leaves the
  rest (flip, pad-and-crop) to the device, as for fixed-size data. Built-in ImageNet keeps pycls's geometry
  whatever the augment (its eval numbers depend on the centre crop).
  """
  if spec.kind != "builtin" and augment != "imagenet":
    return "resize", "resize"
  return "inception", "center"


def eval_resize_size(image_size: int) -> int:
  """Shorter-side size before the centre crop: 256 for 224 (pycls); pass 232 etc. explicitly if needed."""
  return round(image_size * EVAL_RESIZE_RATIO)


def make_train_batches(
  dataset: str | DatasetSpec,
  *,
  data_dir: str | os.PathLike | None,
  global_batch_size: int,
  seed: int,
  start_step: int,
  process_index: int = 0,
  process_count: int = 1,
  image_size: int,
  host_crop: str = "inception",
  num_workers: int = 0,
  num_threads: int = 1,
  prefetch: int = 2,
  download: bool = True,
) -> Iterator[Batch]:
  """Infinite iterator of this process's training batches from step `start_step` on.

  Each batch is {"image": uint8 (B/P, H, W, C), "label": int32 (B/P,)}.
  `image_size` and `host_crop` ("inception", "center" or "resize") only apply to
  variable-sized datasets (ImageNet, image folders), which are cropped on the host; fixed-size
  datasets keep their native size and are resized on the device.
  """
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  spec = as_spec(dataset, data_dir)
  transform = _train_transform(spec, host_crop, image_size)
  source = open_source(spec, "train", data_dir=data_dir, transform=transform, seed=seed, download=download)
  order = TrainOrder(source.num_examples, global_batch_size, seed, process_index, process_count)
  return _iterate(_TrainBatchFn(order, source), start_step, None,
                  num_workers=num_workers, num_threads=num_threads, prefetch=prefetch)


def make_eval_batches(
  dataset: str | DatasetSpec,
  *,
  data_dir: str | os.PathLike | None,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  image_size: int,
  resize_size: int | None = None,
  eval_crop: str = "center",
  num_workers: int = 0,
  num_threads: int = 1,
  prefetch: int = 2,
  download: bool = True,
) -> Iterator[Batch]:
  """One ordered pass over the whole eval split: {"image", "label", "mask": bool (B/P,)} batches.

  Every process yields the same number of batches (ceil(num_eval / B)); padded
  rows are zero with mask False. Variable-sized datasets are resized (shorter
  side to `resize_size`, default round(image_size * 256 / 224)) and centre
  cropped to `image_size` on the host, or with eval_crop="resize" resized whole.
  """
  spec = as_spec(dataset, data_dir)
  transform = _eval_transform(spec, image_size, resize_size, eval_crop)
  source = open_source(spec, "eval", data_dir=data_dir, transform=transform, download=download)
  order = EvalOrder(source.num_examples, global_batch_size, process_index, process_count)
  return _iterate(_EvalBatchFn(order, source), 0, order.num_batches,
                  num_workers=num_workers, num_threads=num_threads, prefetch=prefetch)


def steps_per_epoch(dataset: str | DatasetSpec, global_batch_size: int,
                    data_dir: str | os.PathLike | None = None) -> int:
  """Training steps per epoch (the remainder of each epoch is dropped)."""
  num_train = dataset_info(dataset, data_dir).num_train
  return TrainOrder(num_train, global_batch_size, seed=0).steps_per_epoch
