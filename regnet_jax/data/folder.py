"""Image folders laid out as torchvision's ImageFolder: `ROOT/SPLIT/CLASS/*.jpg|png|...`.

`scan_split` lists a split once, checks it (every class folder holds images, every file with an image extension
opens as one) and returns a `FolderIndex`; `FolderRecords` decodes its images on demand, so grain's worker
processes decode in parallel. Classes are the sorted folder names of the train split, labels their positions,
as in torchvision. Checking every file up front is what lets a bad file fail the run before its workdir is
written rather than hours into training; it reads each file once (PIL's `verify`), ~0.1 ms per JPEG header, and
a split is scanned once per process (`scan_split` is memoised: the trainer asks for it from several places).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import warnings
from typing import Any, Sequence

import numpy as np
from absl import logging
from PIL import Image

from regnet_jax.data.errors import CorruptDatasetError, DatasetNotFoundError

# torchvision's IMG_EXTENSIONS; other files (README, .DS_Store, labels.csv) are ignored, as there.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# PIL modes that hold one intensity channel (with or without alpha).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
CHANNEL_SAMPLE = 64  # images looked at to decide grey vs colour
_SCAN_THREADS = 8  # opening files is mostly waiting on the disk


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """One split of an image folder: files, labels, and what was skipped."""

  root: str
  split: str
  classes: tuple[str, ...]
  paths: tuple[str, ...]
  labels: tuple[int, ...]
  skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) of undecodable files, with skip_bad_images


def _image_files(directory: str) -> list[str]:
  out = []
  for parent, dirs, files in os.walk(directory, followlinks=True):
    dirs.sort()
    out += [os.path.join(parent, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
  return out


def _check_file(path: str) -> str | None:
  """None if `path` opens and verifies as an image, else why not."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning etc. are not errors
      with Image.open(path) as image:
        image.verify()
  except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, OSError, ...)
    return f"{type(e).__name__}: {e}"
  return None


def class_folders(root: str, split: str) -> list[str]:
  directory = os.path.join(root, split)
  if not os.path.isdir(directory):
    present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) if os.path.isdir(root) else []
    raise DatasetNotFoundError(
        f"image folder split {directory} does not exist (the folder has {present or 'no sub-folders'}); lay the "
        "data out as ROOT/train/CLASS/*.jpg and ROOT/val/CLASS/*.jpg, or name the splits with "
        "--config.train_split=... --config.eval_split=...")
  classes = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
  if not classes:
    raise DatasetNotFoundError(f"{directory} has no class sub-folders; expected {directory}/CLASS/IMAGE files")
  return classes


@functools.lru_cache(maxsize=8)
def scan_split(root: str, split: str, classes: tuple[str, ...] | None = None, *,
               skip_bad_images: bool = False) -> FolderIndex:
  """Lists and checks `root/split`. `classes` (the train split's) fixes the label order; None: this split's own.

  Raises DatasetNotFoundError for a missing split or an empty class folder, ValueError for a class folder that
  is not among `classes`, CorruptDatasetError naming an undecodable file (unless `skip_bad_images`).
  """
  root = os.path.abspath(root)
  found = class_folders(root, split)
  classes = tuple(found) if classes is None else classes
  unknown = sorted(set(found) - set(classes))
  if unknown:
    raise ValueError(
        f"{os.path.join(root, split)} has class folders {unknown} that the train split does not have; a model "
        f"can only predict the train split's classes {list(classes)[:20]}. Add them to the train split or remove "
        "them from this one.")
  paths, labels = [], []
  for name in found:
    files = _image_files(os.path.join(root, split, name))
    if not files:
      raise DatasetNotFoundError(
          f"class folder {os.path.join(root, split, name)} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
          "add images or remove the folder")
    paths += files
    labels += [classes.index(name)] * len(files)
  with concurrent.futures.ThreadPoolExecutor(_SCAN_THREADS) as pool:
    problems = list(pool.map(_check_file, paths))
  bad = [(p, why) for p, why in zip(paths, problems) if why is not None]
  if bad and not skip_bad_images:
    listing = "\n  ".join(f"{p}: {why}" for p, why in bad[:5])
    raise CorruptDatasetError(
        f"{len(bad)} of {len(paths)} files in {os.path.join(root, split)} are not decodable images:\n  {listing}"
        f"{chr(10) + '  ...' if len(bad) > 5 else ''}\nRemove or replace them, or pass --config.skip_bad_images=True "
        "to leave them out (they are counted in the log).")
  if bad:
    logging.warning("skipped %d undecodable files of %d in %s (skip_bad_images=True), e.g. %s", len(bad), len(paths),
                    os.path.join(root, split), bad[0][0])
    keep = [why is None for why in problems]
    paths = [p for p, k in zip(paths, keep) if k]
    labels = [label for label, k in zip(labels, keep) if k]
  return FolderIndex(root=root, split=split, classes=tuple(classes), paths=tuple(paths), labels=tuple(labels),
                     skipped=tuple(bad))


def detect_channels(paths: Sequence[str]) -> int:
  """1 when the first CHANNEL_SAMPLE images are all grey, else 3 (colour wins: grey converts to RGB losslessly)."""
  for path in paths[:CHANNEL_SAMPLE]:
    with Image.open(path) as image:
      mode = image.mode
      if mode in ("P", "PA"):  # a palette may be grey or colour: look at it
        mode = "RGB" if _palette_is_colour(image) else "L"
    if mode not in GREY_MODES:
      return 3
  return 1


def _palette_is_colour(image: Image.Image) -> bool:
  palette = np.asarray(image.convert("RGB"))
  return bool(np.any(palette[..., 0] != palette[..., 1]) or np.any(palette[..., 1] != palette[..., 2]))


def decode(path: str, channels: int) -> np.ndarray:
  """uint8 (H, W, channels) pixels of any PIL-readable image.

  Colour: `convert("RGB")`, what torchvision's ImageFolder loader does (alpha is dropped, palettes expanded).
  Grey: luminance; 16-bit and float grey images are scaled to 8 bits rather than clipped.
  """
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with Image.open(path) as image:
      image.load()
      if image.mode.startswith("I") or image.mode == "F":
        pixels = np.asarray(image, np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        grey = np.clip(np.round(pixels * (255.0 / top)), 0, 255).astype(np.uint8)
        return grey[..., None] if channels == 1 else np.repeat(grey[..., None], 3, axis=-1)
      if channels == 1:
        return np.asarray(image.convert("L"))[..., None]
      return np.asarray(image.convert("RGB"))


@dataclasses.dataclass(frozen=True, eq=False)
class FolderRecords:
  """`records[i] -> {"image": uint8 HWC, "label": int}` over a FolderIndex, decoded on access (picklable)."""

  index: FolderIndex
  channels: int

  def __len__(self) -> int:
    return len(self.index.paths)

  def __getitem__(self, i: int) -> dict[str, Any]:
    path = self.index.paths[i]
    try:
      image = decode(path, self.channels)
    except Exception as e:  # passed the header check, failed to decode fully (e.g. truncated JPEG data)
      raise CorruptDatasetError(f"cannot decode image {path} ({type(e).__name__}: {e}); remove or replace it "
                                "(files that fail to open are caught before training; this one failed mid-file)") from e
    return {"image": image, "label": self.index.labels[i]}
