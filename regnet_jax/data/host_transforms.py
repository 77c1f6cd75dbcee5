"""Host-side crops that turn variable-sized images (ImageNet) into fixed-size uint8 arrays.

Only geometry happens here; flips, lighting and normalisation run on the device
(`preprocess.py`). The geometry follows pycls (`pycls/datasets/transforms.py`):
`random_sized_crop` for training, `scale` + `center_crop` for evaluation. The
resampling is PIL's bilinear filter, which antialiases when shrinking (as
torchvision does); pycls's cv2 INTER_LINEAR does not, so pixel values differ
slightly from pycls while crop boxes are the same.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Protocol

import numpy as np
from PIL import Image


class HostTransform(Protocol):
  """Maps one uint8 HWC image to a uint8 (size, size, C) image."""

  # True when the output depends on `rng`; the source then derives a generator per example.
  random: ClassVar[bool]

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray: ...


def _resize_box(image: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
  """Resamples the `box` (x0, y0, x1, y1) region of an HWC uint8 image to `size` (height, width).

  PIL's box argument crops and resizes in one resampling pass; the filter still
  reads source pixels just outside the box, exactly as resize-then-crop would.
  """
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
    raise ValueError(f"expected a uint8 HWC image with 1 or 3 channels, got {image.dtype} {image.shape}")
  grayscale = image.shape[2] == 1
  pil = Image.fromarray(image[..., 0] if grayscale else image)
  out = np.asarray(pil.resize((size[1], size[0]), resample=Image.Resampling.BILINEAR, box=box))
  return out[..., None] if grayscale else out


def center_crop_box(height: int, width: int, size: int, resize_size: int) -> tuple[float, float, float, float]:
  """The source box of pycls's eval geometry: shorter side -> resize_size, then a centred size x size crop.

  The longer side becomes floor(long / short * resize_size) and the crop starts
  at ceil((side - size) / 2), as in pycls's `scale` and `center_crop`.
  """
  if width <= height:
    new_w, new_h = resize_size, int(math.floor(height / width * resize_size))
  else:
    new_w, new_h = int(math.floor(width / height * resize_size)), resize_size
  x, y = math.ceil((new_w - size) / 2), math.ceil((new_h - size) / 2)
  sx, sy = width / new_w, height / new_h
  return (x * sx, y * sy, (x + size) * sx, (y + size) * sy)


@dataclasses.dataclass(frozen=True)
class ResizeCenterCrop:
  """Evaluation geometry: resize the shorter side to `resize_size`, take the centred `size` square."""

  size: int
  resize_size: int
  random: ClassVar[bool] = False

  def __post_init__(self):
    if not 0 < self.size <= self.resize_size:
      raise ValueError(f"need 0 < size <= resize_size, got size={self.size}, resize_size={self.resize_size}")

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    del rng  # deterministic
    box = center_crop_box(image.shape[0], image.shape[1], self.size, self.resize_size)
    return _resize_box(image, (self.size, self.size), box)


@dataclasses.dataclass(frozen=True)
class InceptionCrop:
  """Training geometry: pycls's Inception-style random-sized crop, resized to `size` x `size`.

  Up to `max_attempts` boxes are drawn with area fraction ~ U(area_range) and
  aspect ratio ~ U(aspect_range) (swapped with probability 1/2); the first that
  fits is used, else the evaluation geometry at `size` is the fall-back.
  """

  size: int
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
  max_attempts: int = 10
  random: ClassVar[bool] = True

  def crop_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the crop in source pixels, or None when no attempt fits."""
    area = height * width
    for _ in range(self.max_attempts):
      target_area = rng.uniform(*self.area_range) * area
      aspect = rng.uniform(*self.aspect_range)
      crop_w = int(round(math.sqrt(target_area * aspect)))
      crop_h = int(round(math.sqrt(target_area / aspect)))
      if rng.uniform() < 0.5:
        crop_w, crop_h = crop_h, crop_w
      if 0 < crop_h <= height and 0 < crop_w <= width:
        # pycls draws offsets with randint(0, side - crop): the upper bound is exclusive.
        y = 0 if crop_h == height else int(rng.integers(0, height - crop_h))
        x = 0 if crop_w == width else int(rng.integers(0, width - crop_w))
        return (x, y, x + crop_w, y + crop_h)
    return None

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    if rng is None:
      raise ValueError("InceptionCrop is random: pass a numpy Generator")
    box = self.crop_box(image.shape[0], image.shape[1], rng)
    if box is None:
      box = center_crop_box(image.shape[0], image.shape[1], self.size, self.size)
    return _resize_box(image, (self.size, self.size), box)


@dataclasses.dataclass(frozen=True)
class Resize:
  """The whole image resampled to `size` x `size` (aspect ratio not kept): `augment=none` on image folders."""

  size: int
  random: ClassVar[bool] = False

  def __post_init__(self):
    if self.size <= 0:
      raise ValueError(f"size must be positive, got {self.size}")

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    del rng  # deterministic
    return _resize_box(image, (self.size, self.size), (0.0, 0.0, float(image.shape[1]), float(image.shape[0])))
