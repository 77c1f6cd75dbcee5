"""Your own data: image folders (written from real Fashion-MNIST images), any TFDS dataset (a real tiny build in
array_record and in tfrecord, and `tfds.testing.mock_data`), image modes, statistics, and every bad input."""

import io
import json
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from regnet_jax import data
from regnet_jax.data import export, fashion_mnist, folder, stats, tfds_datasets
from regnet_jax.data.errors import CorruptDatasetError, DatasetNotFoundError

PER_SPLIT = 60  # images per split of the exported folder


@pytest.fixture(scope="module")
def fmnist_folder(tmp_path_factory):
  """classes 5-9 of Fashion-MNIST as train/ and val/ PNG folders (the real images: CI installs the package)."""
  idx_dir = fashion_mnist.find_idx_dir(None)
  if idx_dir is None:
    pytest.skip("needs the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist; scripts/setup.sh does)")
  root = str(tmp_path_factory.mktemp("fmnist_5to9"))
  export.export("fashion_mnist", root, classes=[5, 6, 7, 8, 9], limit=PER_SPLIT)
  return root


def _copy(root, tmp_path):
  out = str(tmp_path / "copy")
  shutil.copytree(root, out)
  return out


def test_folder_spec_and_batches_match_the_source_images(fmnist_folder):
  spec = data.resolve(f"folder:{fmnist_folder}")
  assert spec.classes == ("ankle_boot", "bag", "sandal", "shirt", "sneaker")  # sorted folder names
  assert (spec.num_classes, spec.channels, spec.variable_size, spec.kind) == (5, 1, True, "folder")
  assert spec.mean == data.info.IMAGENET_GREY_MEAN  # ImageNet's statistics unless told otherwise
  info = data.dataset_info(spec)
  assert (info.num_train, info.num_eval) == (PER_SPLIT, PER_SPLIT)
  # Images at their native 28x28 come back pixel for pixel through a same-size Resize.
  images, labels = fashion_mnist.load_split(fashion_mnist.find_idx_dir(None), "train")
  keep = np.flatnonzero(np.isin(labels, [5, 6, 7, 8, 9]))[:PER_SPLIT]
  names = [export.FASHION_MNIST_CLASSES[int(label)] for label in labels[keep]]
  source = data.open_source(spec, "train", transform=data.Resize(28))
  paths = folder.scan_split(spec.location, "train", None).paths
  for i in (0, 7, PER_SPLIT - 1):
    row = int(os.path.basename(paths[i])[:-4])  # files are named by their position among the exported rows
    batch = source.batch(np.array([i]))
    np.testing.assert_array_equal(batch["image"][0], images[keep[row]])
    assert spec.classes[batch["label"][0]] == names[row]
  it = data.make_train_batches(spec, data_dir=None, global_batch_size=8, seed=1, start_step=0, image_size=40,
                               host_crop="inception")
  batch = next(it)
  it.close()
  assert batch["image"].shape == (8, 40, 40, 1) and batch["image"].dtype == np.uint8
  evals = list(data.make_eval_batches(f"folder:{fmnist_folder}", data_dir=None, global_batch_size=16,
                                      image_size=32, eval_crop="resize"))
  assert sum(int(b["mask"].sum()) for b in evals) == PER_SPLIT


def test_folder_batches_through_grain_workers_equal_in_process(fmnist_folder):
  kwargs = dict(data_dir=None, global_batch_size=8, seed=2, start_step=3, image_size=24, host_crop="inception")
  it = data.make_train_batches(f"folder:{fmnist_folder}", num_workers=0, prefetch=0, **kwargs)
  want = [next(it) for _ in range(3)]
  it.close()
  it = data.make_train_batches(f"folder:{fmnist_folder}", num_workers=2, **kwargs)
  got = [next(it) for _ in range(3)]
  it.close()
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def _save(path, image, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, **kwargs)


def test_any_image_mode_decodes_to_the_datasets_channels(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
  grey16 = (rng.integers(0, 65536, (7, 5))).astype(np.uint16)
  files = {
      "rgb.jpg": Image.fromarray(rgb),
      "rgba.png": Image.fromarray(np.dstack([rgb, np.full((9, 13), 128, np.uint8)]), "RGBA"),
      "palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
      "grey.png": Image.fromarray(rgb[..., 0]),
      "grey16.png": Image.fromarray(grey16),
      "bw.bmp": Image.fromarray(rgb[..., 0] > 128),
  }
  for name, image in files.items():
    for split in ("train", "val"):
      _save(str(tmp_path / split / "only" / name), image)
  spec = data.resolve(f"folder:{tmp_path}")
  assert spec.channels == 3  # one colour image makes the dataset colour
  records = folder.FolderRecords(folder.scan_split(str(tmp_path), "train", None), 3)
  by_name = {os.path.basename(p): records[i]["image"] for i, p in enumerate(records.index.paths)}
  for name, image in by_name.items():
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3, name
  np.testing.assert_array_equal(by_name["rgba.png"], rgb)  # alpha dropped, as torchvision's loader does
  np.testing.assert_array_equal(by_name["grey.png"], np.repeat(rgb[..., :1], 3, -1))
  # 16-bit grey is scaled to 8 bits, not clipped at 255.
  np.testing.assert_array_equal(by_name["grey16.png"][..., 0], np.round(grey16 / 257).astype(np.uint8))
  grey = folder.FolderRecords(records.index, 1)
  assert all(grey[i]["image"].shape[-1] == 1 for i in range(len(grey)))
  assert folder.detect_channels([str(tmp_path / "train" / "only" / n) for n in ("grey.png", "bw.bmp")]) == 1


# ----------------------------------------------------------------------------------------------- bad folders


def test_empty_class_folder(fmnist_folder, tmp_path):
  root = _copy(fmnist_folder, tmp_path)
  os.makedirs(os.path.join(root, "train", "zebra"))
  with open(os.path.join(root, "train", "zebra", "notes.txt"), "w") as f:
    f.write("not an image")
  with pytest.raises(DatasetNotFoundError, match=r"class folder \S+/train/zebra holds no images"):
    data.resolve(f"folder:{root}")


def test_class_in_val_but_not_in_train(fmnist_folder, tmp_path):
  root = _copy(fmnist_folder, tmp_path)
  shutil.move(os.path.join(root, "train", "bag"), os.path.join(tmp_path, "bag"))
  with pytest.raises(ValueError, match=r"val has class folders \['bag'\] that the train split does not have"):
    data.resolve(f"folder:{root}")


def test_missing_split_and_missing_folder(fmnist_folder, tmp_path):
  with pytest.raises(DatasetNotFoundError, match=r"split \S+/validation does not exist.*--config.eval_split"):
    data.resolve(f"folder:{fmnist_folder}", eval_split="validation")
  with pytest.raises(DatasetNotFoundError, match="is not a directory"):
    data.resolve(f"folder:{tmp_path}/nowhere")
  assert data.resolve(f"folder:{fmnist_folder}", train_split="val", eval_split="train").train_split == "val"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_undecodable_file_is_named_or_skipped(fmnist_folder, tmp_path, damage):
  root = _copy(fmnist_folder, tmp_path)
  victim = sorted(os.listdir(os.path.join(root, "val", "shirt")))[0]
  path = os.path.join(root, "val", "shirt", victim)
  if damage == "garbage":
    with open(path, "wb") as f:
      f.write(b"this is not a PNG")
  else:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(CorruptDatasetError, match=rf"(?s)1 of {PER_SPLIT} files .* not decodable images:\n  {path}: .*"
                     r"skip_bad_images=True"):
    data.resolve(f"folder:{root}")
  spec = data.resolve(f"folder:{root}", skip_bad_images=True)
  assert data.dataset_info(spec).num_eval == PER_SPLIT - 1
  skipped = folder.scan_split(spec.location, "val", spec.classes, skip_bad_images=True).skipped
  assert [p for p, _ in skipped] == [path]


def test_file_that_fails_mid_decode_names_itself(tmp_path):
  for split in ("train", "val"):
    _save(str(tmp_path / split / "a" / "ok.png"), Image.fromarray(np.zeros((4, 4), np.uint8)))
  records = folder.FolderRecords(folder.scan_split(str(tmp_path), "train", None), 1)
  os.remove(records.index.paths[0])  # gone after the scan: decoding it must say which file
  with pytest.raises(CorruptDatasetError, match=r"cannot decode image \S+/train/a/ok.png"):
    records[0]


def test_unknown_dataset_names_the_forms():
  with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*folder:PATH / tfds:NAME\[:VERSION\]"):
    data.resolve("mnist")
  with pytest.raises(ValueError, match="config.channels=2"):
    data.resolve("fashion_mnist", channels=2)


# ----------------------------------------------------------------------------------------------------- TFDS


class _TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A real TFDS dataset, prepared here without TensorFlow (images as PNG bytes), as a user's build would be."""

  name = "regnet_tiny_images"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=["ant", "bee", "cat"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(12, 0), "test": self._generate_examples(5, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      buffer = io.BytesIO()
      Image.fromarray(rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)).save(buffer, format="PNG")
      buffer.seek(0)
      yield i, {"image": buffer, "label": i % 3}


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  """data_dir with `regnet_tiny_images` (the builder's name) prepared as array_record."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  _TinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def _masked_crc32c(payload: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in payload:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _as_tfrecord(array_record_dir: str, out_dir: str) -> str:
  """The same build rewritten in TFRecord framing (what `tfds build` writes by default)."""
  from array_record.python import array_record_module

  src = os.path.join(array_record_dir, "regnet_tiny_images", "1.0.0")
  dst = os.path.join(out_dir, "regnet_tiny_images", "1.0.0")
  os.makedirs(dst)
  for name in os.listdir(src):
    if ".array_record-" in name:
      records = array_record_module.ArrayRecordReader(os.path.join(src, name)).read_all()
      with open(os.path.join(dst, name.replace(".array_record-", ".tfrecord-")), "wb") as f:
        for record in records:
          length = struct.pack("<Q", len(record))
          f.write(length + struct.pack("<I", _masked_crc32c(length)) + record +
                  struct.pack("<I", _masked_crc32c(record)))
    elif name == "dataset_info.json":
      info = json.load(open(os.path.join(src, name)))
      info["fileFormat"] = "tfrecord"
      json.dump(info, open(os.path.join(dst, name), "w"))
    else:
      shutil.copy(os.path.join(src, name), dst)
  return out_dir


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_prepared_tfds_dataset_in_either_format(tiny_tfds, tmp_path, file_format):
  data_dir = tiny_tfds if file_format == "array_record" else _as_tfrecord(tiny_tfds, str(tmp_path))
  spec = data.resolve("tfds:regnet_tiny_images", data_dir=data_dir)
  assert (spec.classes, spec.channels, spec.variable_size) == (("ant", "bee", "cat"), 3, True)
  assert (spec.train_split, spec.eval_split) == ("train", "test")  # no validation split: test
  assert data.resolve("tfds:regnet_tiny_images:1.0.0", data_dir=data_dir).num_classes == 3
  info = data.dataset_info(spec, data_dir)
  assert (info.num_train, info.num_eval) == (12, 5)
  records = data.sources.split_records(spec, "train", data_dir, False)
  # TFDS stores examples in the order of its key hash; each is still the example that was written.
  examples = [records[i] for i in range(len(records))]
  assert sorted(e["image"].shape[0] for e in examples) == list(range(10, 22))
  assert all(e["label"] == (e["image"].shape[0] - 10) % 3 and e["image"].shape[1:] == (12, 3) for e in examples)
  it = data.make_train_batches(spec, data_dir=data_dir, global_batch_size=4, seed=0, start_step=0, image_size=8)
  assert next(it)["image"].shape == (4, 8, 8, 3)
  it.close()
  grey = data.resolve("tfds:regnet_tiny_images", data_dir=data_dir, channels=1)
  assert data.open_source(grey, "eval", data_dir=data_dir, transform=data.Resize(6)).batch(
      np.arange(2))["image"].shape == (2, 6, 6, 1)


def test_both_formats_read_the_same_examples(tiny_tfds, tmp_path):
  tfrecord_dir = _as_tfrecord(tiny_tfds, str(tmp_path))
  spec = data.resolve("tfds:regnet_tiny_images", data_dir=tiny_tfds)
  a = data.sources.split_records(spec, "test", tiny_tfds, False)
  b = data.sources.split_records(spec, "test", tfrecord_dir, False)
  for i in range(len(a)):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    assert a[i]["label"] == b[i]["label"]


def test_truncated_tfrecord_is_reported(tiny_tfds, tmp_path):
  tfrecord_dir = _as_tfrecord(tiny_tfds, str(tmp_path))
  shard = [os.path.join(r, f) for r, _, fs in os.walk(tfrecord_dir) for f in fs if "-train.tfrecord-" in f][0]
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) - 7)
  spec = data.resolve("tfds:regnet_tiny_images", data_dir=tfrecord_dir)
  with pytest.raises(CorruptDatasetError, match=r"TFRecord file \S+ is truncated.*rebuild the dataset"):
    data.dataset_info(spec, tfrecord_dir)


def test_mock_registered_tfds_dataset():
  with tfds.testing.mock_data(num_examples=6):
    spec = data.resolve("tfds:beans")
    assert (spec.num_classes, spec.channels, spec.variable_size) == (3, 3, False)
    info = data.dataset_info(spec)
    assert (info.num_train, info.num_eval) == (6, 6)
    batch = data.open_source(spec, "train").batch(np.arange(3))
    assert batch["image"].shape == (3, 500, 500, 3)


def test_tfds_not_prepared_or_unknown(tmp_path):
  with pytest.raises(DatasetNotFoundError, match=r"TFDS dataset 'beans' split 'train' is not prepared.*tfds build "
                     r"beans --file_format=array_record"):
    data.dataset_info(data.resolve("tfds:beans", data_dir=str(tmp_path)), str(tmp_path))
  with pytest.raises(DatasetNotFoundError, match=r"TFDS has no dataset 'no_such_dataset_xyz'.*tfds.list_builders"):
    data.resolve("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="not an image-classification dataset"):
    data.resolve("tfds:imdb_reviews", data_dir=str(tmp_path))


def test_to_channels():
  rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
  assert tfds_datasets.to_channels(rgba, 3).shape == (3, 4, 3)
  grey = tfds_datasets.to_channels(rgba[..., :3], 1)
  want = np.asarray(Image.fromarray(rgba[..., :3]).convert("L"))
  assert np.abs(grey[..., 0].astype(int) - want).max() <= 1  # PIL rounds in fixed point
  np.testing.assert_array_equal(tfds_datasets.to_channels(grey, 3), np.repeat(grey, 3, -1))


# ----------------------------------------------------------------------------------------------- statistics


def test_stats_reproduce_the_fashion_mnist_constants():
  if fashion_mnist.find_idx_dir(None) is None:
    pytest.skip("needs the Fashion-MNIST IDX files")
  s = stats.channel_stats(stats._train_images("fashion_mnist", None, 0))
  spec = data.dataset_spec("fashion_mnist")
  np.testing.assert_allclose(s.mean, spec.mean, rtol=1e-9)
  np.testing.assert_allclose(s.std, spec.std, rtol=1e-9)
  assert s.num_images == 60000
  assert s.flags() == '--config.mean="(72.9404,)" --config.std="(90.0212,)"'


def test_stats_over_images_of_different_sizes():
  images = [np.full((2, 3, 3), 10, np.uint8), np.full((4, 1, 3), 40, np.uint8)]
  s = stats.channel_stats(images)
  pixels = np.concatenate([i.reshape(-1, 3) for i in images]).astype(np.float64)
  np.testing.assert_allclose(s.mean, pixels.mean(0))
  np.testing.assert_allclose(s.std, pixels.std(0))


def test_host_geometry_follows_augment_for_own_data(fmnist_folder):
  spec = data.resolve(f"folder:{fmnist_folder}")
  assert data.host_crops_for(spec, "imagenet") == ("inception", "center")
  for augment in ("none", "flip", "crop_flip"):  # the device does flips and pad-crops; the host only resizes
    assert data.host_crops_for(spec, augment) == ("resize", "resize")
  assert data.host_crops_for(data.dataset_spec("imagenet2012"), "none") == ("inception", "center")
