"""TFDS-backed sources under `tfds.testing.mock_data` (no data, no TensorFlow, no network).

mock_data replaces `tfds.data_source`'s records with random examples that are a
deterministic function of the record index; mocked ImageNet images have random
sizes (5 to 49 pixels a side), so they exercise the host crops.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from regnet_jax.data import (
  InceptionCrop,
  ResizeCenterCrop,
  RecordSource,
  dataset_info,
  make_eval_batches,
  make_train_batches,
  open_source,
)
from regnet_jax.data.seeding import epoch_permutation

NUM_EXAMPLES = 40
BATCH = 8
IMAGE_SIZE = 32
STEPS_PER_EPOCH = NUM_EXAMPLES // BATCH


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    yield


def _train(name, *, steps, start_step=0, data_dir=None, **kwargs):
  iterator = make_train_batches(
    name,
    data_dir=data_dir,
    global_batch_size=BATCH,
    seed=3,
    start_step=start_step,
    image_size=IMAGE_SIZE,
    **kwargs,
  )
  batches = [next(iterator) for _ in range(steps)]
  iterator.close()  # stops grain's threads / workers now rather than at garbage collection
  return batches


def _assert_same(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_mock_imagenet_info(mock_tfds):
  info = dataset_info("imagenet2012")
  assert (info.num_train, info.num_eval, info.num_classes, info.channels) == (NUM_EXAMPLES, NUM_EXAMPLES, 1000, 3)


def test_mock_imagenet_train_batches(mock_tfds):
  records = tfds.data_source("imagenet2012", split="train")
  assert len({records[i]["image"].shape for i in range(10)}) > 1  # really variable-sized
  batches = _train("imagenet2012", steps=2 * STEPS_PER_EPOCH)
  for step, batch in enumerate(batches):
    assert batch["image"].shape == (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    epoch, position = divmod(step, STEPS_PER_EPOCH)
    rows = epoch_permutation(3, epoch, NUM_EXAMPLES)[position * BATCH : (position + 1) * BATCH]
    np.testing.assert_array_equal(batch["label"], [records[int(i)]["label"] for i in rows])
  # Deterministic, and resumable mid-run with identical crops.
  _assert_same(batches, _train("imagenet2012", steps=2 * STEPS_PER_EPOCH))
  _assert_same(batches[7:], _train("imagenet2012", steps=2 * STEPS_PER_EPOCH - 7, start_step=7))


def test_inception_crop_is_per_epoch_and_example(mock_tfds):
  source = open_source("imagenet2012", "train", transform=InceptionCrop(IMAGE_SIZE), seed=3)
  assert isinstance(source, RecordSource)
  indices = np.arange(6)
  epoch0 = source.batch(indices, epoch=0)["image"]
  np.testing.assert_array_equal(epoch0, source.batch(indices, epoch=0)["image"])
  assert not np.array_equal(epoch0, source.batch(indices, epoch=1)["image"])
  # An example's crop does not depend on which batch (or process) reads it.
  np.testing.assert_array_equal(epoch0[2:3], source.batch(indices[2:3], epoch=0)["image"])


@pytest.mark.parametrize("resize_size, expected_resize", [(None, 37), (48, 48)])  # 37 = round(32 * 256 / 224)
def test_mock_imagenet_eval_batches(mock_tfds, resize_size, expected_resize):
  records = tfds.data_source("imagenet2012", split="validation")
  batches = list(make_eval_batches(
    "imagenet2012", data_dir=None, global_batch_size=16, image_size=IMAGE_SIZE, resize_size=resize_size
  ))
  assert [int(b["mask"].sum()) for b in batches] == [16, 16, 8]
  crop = ResizeCenterCrop(IMAGE_SIZE, expected_resize)
  for k, batch in enumerate(batches):
    assert batch["image"].shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3)
    for row in np.flatnonzero(batch["mask"]):
      np.testing.assert_array_equal(batch["image"][row], crop(records[16 * k + row]["image"]))


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("fashion_mnist", (28, 28, 1))])
def test_mock_fixed_size_datasets(mock_tfds, tmp_path, name, shape):
  # An empty data_dir: Fashion-MNIST finds no IDX files there and goes through TFDS.
  (batch,) = _train(name, steps=1, data_dir=tmp_path)
  assert batch["image"].shape == (BATCH, *shape) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and 0 <= batch["label"].min() and batch["label"].max() < 10
  eval_batches = list(make_eval_batches(name, data_dir=tmp_path, global_batch_size=16, image_size=IMAGE_SIZE))
  assert sum(int(b["mask"].sum()) for b in eval_batches) == NUM_EXAMPLES


def test_grain_worker_processes_match_in_process(mock_tfds):
  # 2 worker processes (spawned; the mocked records are pickled to them).
  steps = STEPS_PER_EPOCH + 2  # across an epoch boundary
  in_process = _train("imagenet2012", steps=steps, start_step=1, prefetch=0)
  _assert_same(in_process, _train("imagenet2012", steps=steps, start_step=1, num_workers=2))
