"""Tests of regnet_jax.data: IDX files, Fashion-MNIST, and the host batch iterators.

Most iterator tests use a small synthetic Fashion-MNIST directory whose images
carry their own example index in two pixels, so batches can be decoded back
into the example indices they hold.
"""

import gzip

import numpy as np
import pytest

from regnet_jax.data import (
  CorruptDatasetError,
  DatasetNotFoundError,
  dataset_info,
  make_eval_batches,
  make_train_batches,
  steps_per_epoch,
)
from regnet_jax.data import fashion_mnist, idx
from regnet_jax.data.seeding import epoch_permutation

REAL_DIR = fashion_mnist.DEFAULT_DIR
needs_real_data = pytest.mark.skipif(
  fashion_mnist.find_idx_dir(None) is None,
  reason=f"Fashion-MNIST IDX files not in {REAL_DIR} (apt-get install dataset-fashion-mnist)",
)

NUM_TRAIN, NUM_TEST = 1000, 37  # 37: no batch size used below divides it


def _indexed_images(n: int) -> np.ndarray:
  """uint8 (n, 28, 28) images whose pixels (0, 0) and (0, 1) spell their index in base 256."""
  images = np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)
  images[:, 0, 0] = np.arange(n) % 256
  images[:, 0, 1] = np.arange(n) // 256
  return images


def _indices_of(batch: dict) -> np.ndarray:
  image = batch["image"].astype(np.int64)
  return image[:, 0, 0, 0] + 256 * image[:, 0, 1, 0]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("fashion_mnist")
  for split, n in (("train", NUM_TRAIN), ("test", NUM_TEST)):
    images_name, labels_name = fashion_mnist.FILES[split]
    idx.write_idx(directory / images_name, _indexed_images(n))
    idx.write_idx(directory / labels_name, (np.arange(n) % 10).astype(np.uint8))
  return directory


def _train(data_dir, *, steps, batch=96, seed=0, start_step=0, **kwargs):
  iterator = make_train_batches(
    "fashion_mnist",
    data_dir=data_dir,
    global_batch_size=batch,
    seed=seed,
    start_step=start_step,
    image_size=96,
    **kwargs,
  )
  return [next(iterator) for _ in range(steps)]


# ---------------------------------------------------------------- IDX format


def test_hand_written_idx_round_trip(tmp_path):
  # 2 x 3 uint8: two zero bytes, dtype code 0x08 (uint8), 2 dimensions; then dims 2 and 3; payload 0..5.
  data = bytes.fromhex("00000802" "00000002" "00000003") + bytes(range(6))
  array = idx.parse_idx(data)
  np.testing.assert_array_equal(array, [[0, 1, 2], [3, 4, 5]])
  assert array.dtype == np.uint8
  assert idx.encode_idx(array) == data
  # Big-endian int32 vector [256, -1]: dtype code 0x0C, one dimension of 2.
  ints = idx.parse_idx(bytes.fromhex("00000c01" "00000002" "00000100" "ffffffff"))
  np.testing.assert_array_equal(ints, [256, -1])
  assert ints.dtype == np.dtype("int32") and ints.dtype.isnative
  # gzip is detected by content, not by name.
  path = tmp_path / "a.idx.gz"
  idx.write_idx(path, array)
  assert path.read_bytes()[:2] == b"\x1f\x8b"
  np.testing.assert_array_equal(idx.read_idx(path), array)
  assert idx.read_idx_shape(path) == (2, 3)
  plain = tmp_path / "a.idx"
  plain.write_bytes(gzip.decompress(path.read_bytes()))
  np.testing.assert_array_equal(idx.read_idx(plain), array)


@pytest.mark.parametrize(
  "data, message",
  [
    (bytes.fromhex("01000802" "00000002" "00000003") + bytes(6), "magic"),
    (bytes.fromhex("00000702" "00000002" "00000003") + bytes(6), "magic"),
    (bytes.fromhex("00000802" "00000002" "00000003") + bytes(5), "truncated"),
    (bytes.fromhex("00000803" "00000002"), "truncated"),
    (b"\x1f\x8b" + b"not really gzip", "gzip"),
  ],
)
def test_corrupt_idx_is_a_clear_error(tmp_path, data, message):
  path = tmp_path / "bad.idx"
  path.write_bytes(data)
  with pytest.raises(CorruptDatasetError, match=message) as error:
    idx.read_idx(path)
  assert str(path) in str(error.value)


def test_encode_rejects_unsupported_dtype():
  with pytest.raises(ValueError, match="uint16"):
    idx.encode_idx(np.zeros(3, np.uint16))


# ---------------------------------------------------------------- Fashion-MNIST files


@needs_real_data
def test_real_fashion_mnist_files():
  train_images, train_labels = fashion_mnist.load_split(REAL_DIR, "train")
  test_images, test_labels = fashion_mnist.load_split(REAL_DIR, "test")
  assert train_images.shape == (60000, 28, 28, 1) and train_images.dtype == np.uint8
  assert test_images.shape == (10000, 28, 28, 1)
  assert train_labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(train_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(test_labels), [1000] * 10)
  info = dataset_info("fashion_mnist")
  assert (info.num_train, info.num_eval, info.num_classes, info.channels) == (60000, 10000, 10, 1)
  # The normalisation constants are the training set's own statistics.
  np.testing.assert_allclose(train_images.mean(), info.mean[0], rtol=1e-9)
  np.testing.assert_allclose(train_images.std(dtype=np.float64), info.std[0], rtol=1e-9)
  assert steps_per_epoch("fashion_mnist", 128) == 468


def test_partial_directory_names_missing_files(tmp_path):
  images_name, labels_name = fashion_mnist.FILES["train"]
  idx.write_idx(tmp_path / images_name, np.zeros((2, 28, 28), np.uint8))
  idx.write_idx(tmp_path / labels_name, np.zeros(2, np.uint8))
  with pytest.raises(DatasetNotFoundError, match="t10k-images-idx3-ubyte.gz"):
    dataset_info("fashion_mnist", tmp_path)


def test_wrong_image_shape_is_corrupt(tmp_path):
  for split in ("train", "test"):
    images_name, labels_name = fashion_mnist.FILES[split]
    idx.write_idx(tmp_path / images_name, np.zeros((2, 27, 28), np.uint8))
    idx.write_idx(tmp_path / labels_name, np.zeros(2, np.uint8))
  with pytest.raises(CorruptDatasetError, match=r"\(2, 27, 28\)"):
    fashion_mnist.load_split(tmp_path, "train")


def test_unpacked_files_are_found(tmp_path, synthetic_dir):
  for path in synthetic_dir.iterdir():
    (tmp_path / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
  info = dataset_info("fashion_mnist", tmp_path)
  assert (info.num_train, info.num_eval) == (NUM_TRAIN, NUM_TEST)


def test_missing_dataset_says_how_to_get_it(tmp_path):
  with pytest.raises(DatasetNotFoundError) as error:
    make_train_batches(
      "fashion_mnist", data_dir=tmp_path, global_batch_size=8, seed=0, start_step=0, image_size=96, download=False
    )
  message = str(error.value)
  assert isinstance(error.value, FileNotFoundError)
  assert "apt-get install -y dataset-fashion-mnist" in message
  assert "--config.data_dir" in message and str(tmp_path) in message


def test_unknown_dataset_lists_known_ones():
  with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; known: cifar10, fashion_mnist, imagenet2012, or folder:PATH"):
    dataset_info("mnist")


# ---------------------------------------------------------------- training order


def test_train_batches_shapes_and_labels(synthetic_dir):
  (batch,) = _train(synthetic_dir, steps=1)
  assert batch["image"].shape == (96, 28, 28, 1) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (96,) and batch["label"].dtype == np.int32
  np.testing.assert_array_equal(batch["label"], _indices_of(batch) % 10)
  assert steps_per_epoch("fashion_mnist", 96, synthetic_dir) == NUM_TRAIN // 96


def test_epochs_are_permutations_with_remainder_dropped(synthetic_dir):
  steps = NUM_TRAIN // 96  # 10 steps per epoch, 40 examples dropped each epoch
  batches = _train(synthetic_dir, steps=2 * steps)
  epochs = [np.concatenate([_indices_of(b) for b in batches[e * steps : (e + 1) * steps]]) for e in range(2)]
  for epoch, seen in enumerate(epochs):
    np.testing.assert_array_equal(seen, epoch_permutation(0, epoch, NUM_TRAIN)[: steps * 96])
    assert len(np.unique(seen)) == steps * 96
  assert not np.array_equal(epochs[0], epochs[1])


def test_same_seed_same_batches_other_seed_other_batches(synthetic_dir):
  first = _train(synthetic_dir, steps=12)
  again = _train(synthetic_dir, steps=12, prefetch=0)  # in-thread path must agree with grain's
  other = _train(synthetic_dir, steps=12, seed=1)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(_indices_of(first[0]), _indices_of(other[0]))


def test_resume_reproduces_the_uninterrupted_tail(synthetic_dir):
  uninterrupted = _train(synthetic_dir, steps=25)
  for k in (1, 10, 13):  # mid-epoch and exactly at an epoch boundary
    resumed = _train(synthetic_dir, steps=25 - k, start_step=k)
    for a, b in zip(uninterrupted[k:], resumed):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(synthetic_dir, process_count):
  global_batches = _train(synthetic_dir, steps=12, start_step=5)
  slices = [
    _train(synthetic_dir, steps=12, start_step=5, process_index=p, process_count=process_count)
    for p in range(process_count)
  ]
  for step, global_batch in enumerate(global_batches):
    for key in ("image", "label"):
      parts = [process_slices[step][key] for process_slices in slices]
      assert parts[0].shape[0] == 96 // process_count
      np.testing.assert_array_equal(np.concatenate(parts), global_batch[key])


def test_batch_must_divide_among_processes(synthetic_dir):
  with pytest.raises(ValueError, match="not divisible by process_count 4"):
    _train(synthetic_dir, steps=1, batch=90, process_count=4)


# ---------------------------------------------------------------- evaluation order


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_counts_every_example_exactly_once(synthetic_dir, process_count):
  batch_size = 16  # 37 examples: 3 global batches, the last with 5 real rows
  per_process = [
    list(
      make_eval_batches(
        "fashion_mnist",
        data_dir=synthetic_dir,
        global_batch_size=batch_size,
        process_index=p,
        process_count=process_count,
        image_size=96,
      )
    )
    for p in range(process_count)
  ]
  seen = []
  for batches in per_process:
    assert len(batches) == 3  # every process runs the same number of eval steps
    for batch in batches:
      assert batch["image"].shape == (batch_size // process_count, 28, 28, 1)
      assert batch["mask"].dtype == np.bool_
      real = batch["mask"]
      seen.extend(_indices_of(batch)[real])
      np.testing.assert_array_equal(batch["label"][real], _indices_of(batch)[real] % 10)
      assert not batch["image"][~real].any() and not batch["label"][~real].any()
  assert sorted(seen) == list(range(NUM_TEST))
  # In order: the first global batch holds examples 0..15.
  first = np.concatenate([_indices_of(batches[0]) for batches in per_process])
  np.testing.assert_array_equal(first, np.arange(16))
