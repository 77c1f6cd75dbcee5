"""On-device preprocessing: uint8 NHWC batches in, normalised float32 NHWC out.

Pure jnp functions, safe under `jax.jit` (shapes and options are static). The
per-example randomness of an augmentation comes from one `rng` per batch,
split into one key per augmentation, so the same rng gives the same batch.
Pixel values stay in [0, 255] until `normalize`, matching `DatasetInfo.mean/std`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from regnet_jax.data.info import DatasetInfo

AUGMENTATIONS = ("none", "flip", "crop_flip", "imagenet")
# PCA of ImageNet's RGB pixel covariance in [0, 1] units (pycls imagenet.py, from AlexNet):
# eigenvalues, and eigenvectors as the columns of the matrix (rows are R, G, B).
PCA_EIGVALS = (0.2175, 0.0188, 0.0045)
PCA_EIGVECS = (
  (-0.5675, 0.7192, 0.4009),
  (-0.5808, -0.0045, -0.8140),
  (-0.5836, -0.6948, 0.4203),
)
LIGHTING_ALPHA_STD = 0.1
# "crop_flip" pads by 4 pixels per 32 of image size (pycls's CIFAR recipe) and crops back.
CROP_PAD_FRACTION = 4 / 32
_PIXEL_SCALE = 255.0  # the PCA above is in [0, 1] units, our pixels in [0, 255]


def _check_images(images: jax.Array, info: DatasetInfo) -> None:
  if images.ndim != 4 or images.shape[-1] != info.channels:
    raise ValueError(
      f"expected NHWC images with {info.channels} channels for {info.name}, got shape {images.shape}"
    )


def resize(images: jax.Array, image_size: int) -> jax.Array:
  """float32 images resized (bilinear, antialiased when shrinking) to image_size x image_size."""
  images = images.astype(jnp.float32)
  batch, height, width, channels = images.shape
  if (height, width) == (image_size, image_size):
    return images
  return jax.image.resize(images, (batch, image_size, image_size, channels), method="bilinear")


def normalize(images: jax.Array, info: DatasetInfo) -> jax.Array:
  """(x - mean) / std per channel, in pixel units."""
  mean = jnp.asarray(info.mean, jnp.float32)
  std = jnp.asarray(info.std, jnp.float32)
  return (images - mean) / std


def random_flip(images: jax.Array, rng: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def random_pad_crop(images: jax.Array, rng: jax.Array, pad: int) -> jax.Array:
  """Zero-pads each side by `pad` and takes a random crop of the original size per image."""
  if pad == 0:
    return images
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(rng, (images.shape[0], 2), 0, 2 * pad + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

  return jax.vmap(crop)(padded, offsets)


def pca_lighting(images: jax.Array, rng: jax.Array, alpha_std: float = LIGHTING_ALPHA_STD) -> jax.Array:
  """AlexNet/pycls PCA lighting: adds eigvecs @ (alpha * eigvals), alpha ~ N(0, alpha_std), per image.

  pycls adds rgb[2 - c] to its BGR channel c, i.e. rgb[c] to RGB channel c, as here.
  """
  if images.shape[-1] != 3:
    raise ValueError(f"PCA lighting needs RGB images, got {images.shape[-1]} channels")
  alpha = alpha_std * jax.random.normal(rng, (images.shape[0], 3), jnp.float32)
  eigvals = jnp.asarray(PCA_EIGVALS, jnp.float32)
  eigvecs = jnp.asarray(PCA_EIGVECS, jnp.float32)
  offsets = _PIXEL_SCALE * (alpha * eigvals) @ eigvecs.T  # (B, 3)
  return images + offsets[:, None, None, :]


def train_preprocess(
  images_uint8: jax.Array, rng: jax.Array, *, info: DatasetInfo, image_size: int, augment: str
) -> jax.Array:
  """Training batch -> float32 NHWC at image_size.

  augment: "none"; "flip"; "crop_flip" (flip + zero-pad/random crop after
  normalising, as pycls does for CIFAR); "imagenet" (flip + PCA lighting; the
  Inception crop itself is done on the host).
  """
  if augment not in AUGMENTATIONS:
    raise ValueError(f"unknown augment {augment!r}; known: {AUGMENTATIONS}")
  _check_images(images_uint8, info)
  flip_rng, crop_rng, lighting_rng = jax.random.split(rng, 3)
  images = resize(images_uint8, image_size)
  if augment != "none":
    images = random_flip(images, flip_rng)
  if augment == "imagenet":
    images = pca_lighting(images, lighting_rng)
  images = normalize(images, info)
  if augment == "crop_flip":
    # Padding after normalising pads with the mean colour, as pycls does.
    images = random_pad_crop(images, crop_rng, round(image_size * CROP_PAD_FRACTION))
  return images


def eval_preprocess(images_uint8: jax.Array, *, info: DatasetInfo, image_size: int) -> jax.Array:
  """Evaluation batch -> float32 NHWC at image_size (host already centre-cropped variable-sized data)."""
  _check_images(images_uint8, info)
  return normalize(resize(images_uint8, image_size), info)
