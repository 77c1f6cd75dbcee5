"""Tests of on-device preprocessing (regnet_jax.data.preprocess) and the host crops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax.data import DatasetInfo, InceptionCrop, ResizeCenterCrop, dataset_spec, eval_resize_size
from regnet_jax.data import preprocess
from regnet_jax.data.host_transforms import center_crop_box


def _info(name: str) -> DatasetInfo:
  spec = dataset_spec(name)
  return DatasetInfo(spec.name, spec.num_classes, spec.channels, 100, 10, spec.mean, spec.std)


FMNIST, IMAGENET = _info("fashion_mnist"), _info("imagenet2012")


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


# ---------------------------------------------------------------- on device


def test_eval_preprocess_shapes_and_constant_image_values():
  out = preprocess.eval_preprocess(jnp.full((4, 28, 28, 1), 100, jnp.uint8), info=FMNIST, image_size=96)
  assert out.shape == (4, 96, 96, 1) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, (100 - FMNIST.mean[0]) / FMNIST.std[0], rtol=1e-6)
  rgb = jnp.broadcast_to(jnp.asarray([10, 128, 250], jnp.uint8), (2, 32, 32, 3))
  out = preprocess.eval_preprocess(rgb, info=IMAGENET, image_size=32)
  expected = (np.array([10, 128, 250]) - np.array(IMAGENET.mean)) / np.array(IMAGENET.std)
  np.testing.assert_allclose(out, np.broadcast_to(expected, (2, 32, 32, 3)), rtol=1e-5)


def test_train_without_augmentation_equals_eval_and_jit_equals_eager():
  images = _images((4, 28, 28, 1))
  rng = jax.random.key(0)
  eager = preprocess.train_preprocess(images, rng, info=FMNIST, image_size=96, augment="none")
  np.testing.assert_array_equal(eager, preprocess.eval_preprocess(images, info=FMNIST, image_size=96))
  jitted = jax.jit(lambda x, k: preprocess.train_preprocess(x, k, info=FMNIST, image_size=96, augment="crop_flip"))
  np.testing.assert_allclose(
    jitted(images, rng),
    preprocess.train_preprocess(images, rng, info=FMNIST, image_size=96, augment="crop_flip"),
    atol=1e-6,
  )


def test_flip_is_per_example_and_reproducible():
  images = _images((64, 8, 8, 1))
  plain = preprocess.eval_preprocess(images, info=FMNIST, image_size=8)
  flip = lambda key: preprocess.train_preprocess(images, key, info=FMNIST, image_size=8, augment="flip")
  out = flip(jax.random.key(1))
  np.testing.assert_array_equal(out, flip(jax.random.key(1)))
  assert not np.array_equal(out, flip(jax.random.key(2)))
  flipped = np.array([np.array_equal(o, p[:, ::-1]) for o, p in zip(out, plain)])
  kept = np.array([np.array_equal(o, p) for o, p in zip(out, plain)])
  assert np.all(flipped ^ kept)  # each image is either mirrored or untouched
  assert 16 < flipped.sum() < 48  # about half of 64


def test_pca_lighting_matches_pycls_formula():
  key = jax.random.key(3)
  out = preprocess.pca_lighting(jnp.zeros((5, 4, 4, 3)), key)
  alpha = preprocess.LIGHTING_ALPHA_STD * np.asarray(jax.random.normal(key, (5, 3)))
  eig_val, eig_vec = np.array([preprocess.PCA_EIGVALS]), np.array(preprocess.PCA_EIGVECS)
  for image, a in zip(np.asarray(out), alpha):
    # pycls transforms.lighting, verbatim in its CHW/BGR form, on a [0, 1] image of zeros.
    rgb = np.sum(eig_vec * np.repeat(a[None], 3, axis=0) * np.repeat(eig_val, 3, axis=0), axis=1)
    bgr_image = np.zeros((3, 4, 4))
    for i in range(3):
      bgr_image[i] = bgr_image[i] + rgb[2 - i]
    np.testing.assert_allclose(image, 255 * bgr_image[::-1].transpose(1, 2, 0), rtol=1e-5, atol=1e-5)


def test_imagenet_augment_is_flip_plus_a_constant_colour_shift():
  images = _images((6, 16, 16, 3))
  key = jax.random.key(4)
  out = preprocess.train_preprocess(images, key, info=IMAGENET, image_size=16, augment="imagenet")
  np.testing.assert_array_equal(
    out, preprocess.train_preprocess(images, key, info=IMAGENET, image_size=16, augment="imagenet")
  )
  flipped = preprocess.train_preprocess(images, key, info=IMAGENET, image_size=16, augment="flip")
  shift = np.asarray(out - flipped) * np.asarray(IMAGENET.std)  # back to pixel units
  np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1, :1], shift.shape), atol=1e-3)
  assert 0.1 < np.abs(shift[:, 0, 0]).mean() < 30  # 255 * 0.1 * 0.2175 * |eigvec| ~ 3 pixel levels


def test_crop_flip_pads_with_the_mean_and_shifts_within_the_pad():
  images = jnp.full((32, 32, 32, 1), 200, jnp.uint8)
  out = np.asarray(
    preprocess.train_preprocess(images, jax.random.key(5), info=FMNIST, image_size=32, augment="crop_flip")
  )
  value = (200 - FMNIST.mean[0]) / FMNIST.std[0]
  pad = round(32 * preprocess.CROP_PAD_FRACTION)
  assert pad == 4
  for image in out[..., 0]:
    assert np.all((image == 0) | np.isclose(image, value, rtol=1e-5))
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    assert len(rows) >= 32 - pad and len(cols) >= 32 - pad  # the shift is at most `pad`
  assert len({out[i].tobytes() for i in range(32)}) > 4  # offsets differ between examples


def test_bad_options_are_named():
  images = _images((2, 8, 8, 1))
  with pytest.raises(ValueError, match="unknown augment 'mixup'"):
    preprocess.train_preprocess(images, jax.random.key(0), info=FMNIST, image_size=8, augment="mixup")
  with pytest.raises(ValueError, match="RGB"):
    preprocess.train_preprocess(images, jax.random.key(0), info=FMNIST, image_size=8, augment="imagenet")
  with pytest.raises(ValueError, match="3 channels"):
    preprocess.eval_preprocess(images, info=IMAGENET, image_size=8)


# ---------------------------------------------------------------- host crops


def _ramp(height, width, axis):
  """uint8 image whose value grows linearly along `axis` (1: columns, 0: rows) from 0 to 255."""
  n = (height, width)[axis]
  line = np.linspace(0, 255, n)
  values = line[None, :] if axis == 1 else line[:, None]
  return np.repeat(np.broadcast_to(values, (height, width))[..., None], 3, axis=2).round().astype(np.uint8)


def test_center_crop_box_follows_pycls():
  # 375 x 500 (h x w) -> shorter side 256: 256 x floor(500 / 375 * 256) = 256 x 341; crop at ceil(117/2), ceil(32/2).
  box = center_crop_box(375, 500, 224, 256)
  scale = 375 / 256
  np.testing.assert_allclose(box, (59 * 500 / 341, 16 * scale, 283 * 500 / 341, 240 * scale))
  tall = center_crop_box(500, 375, 224, 256)
  np.testing.assert_allclose(tall, (16 * scale, 59 * 500 / 341, 240 * scale, 283 * 500 / 341))


@pytest.mark.parametrize("height, width, axis", [(100, 300, 1), (300, 100, 0)])
def test_eval_crop_geometry_on_non_square_images(height, width, axis):
  crop = ResizeCenterCrop(size=40, resize_size=50)
  out = crop(_ramp(height, width, axis)).astype(np.float64)
  assert out.shape == (40, 40, 3) and crop(_ramp(height, width, axis)).dtype == np.uint8
  # Resized long side: floor(300 / 100 * 50) = 150; crop starts at ceil((150 - 40) / 2) = 55.
  # Output pixel j samples resized pixel 55 + j, i.e. source coordinate (55 + j + 0.5) * 2 - 0.5.
  source = (55 + np.arange(40) + 0.5) * 2 - 0.5
  expected = source * 255 / 299
  profile = out[..., 0].mean(axis=0 if axis == 1 else 1)
  np.testing.assert_allclose(profile, expected, atol=1.0)
  across = out[..., 0].std(axis=0 if axis == 1 else 1)  # constant across the ramp's orthogonal axis
  assert across.max() < 0.6


def test_inception_crop_boxes_and_determinism():
  crop = InceptionCrop(size=24)
  image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
  np.testing.assert_array_equal(crop(image, np.random.default_rng(7)), crop(image, np.random.default_rng(7)))
  assert crop(image, np.random.default_rng(7)).shape == (24, 24, 3)
  areas, aspects = [], []
  for seed in range(300):
    x0, y0, x1, y1 = crop.crop_box(60, 90, np.random.default_rng(seed))
    assert 0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 60
    areas.append((x1 - x0) * (y1 - y0) / (60 * 90))
    aspects.append((x1 - x0) / (y1 - y0))
  assert 0.06 < min(areas) and max(areas) <= 1.0 and np.mean(areas) > 0.3
  assert 0.7 < min(aspects) and max(aspects) < 1.45  # within (3/4, 4/3) up to pixel rounding
  # A 1-pixel-wide image fits no box: the centre-crop fall-back still gives size x size.
  assert crop(np.zeros((50, 1, 1), np.uint8), np.random.default_rng(0)).shape == (24, 24, 1)


def test_eval_resize_size():
  assert eval_resize_size(224) == 256 and eval_resize_size(32) == 37
  with pytest.raises(ValueError, match="size=224, resize_size=200"):
    ResizeCenterCrop(224, 200)
