"""Per-channel mean and std of a dataset's training images, in [0, 255] pixel units, to pass to training.

    python -m regnet_jax.data.stats folder:/data/flowers [--max_images=20000] [--data_dir=...]

prints the values and the flags that use them (`--config.mean=... --config.std=...`). Statistics are over every
pixel of the decoded images at their own size (what normalisation sees before resizing, up to the resampling),
in a fixed order of the first `max_images` training examples (0: all); sums are float64, so 1.28M ImageNet images
lose no precision. Fine-tuning converted ImageNet weights usually keeps ImageNet's statistics (the default);
these are for training from scratch on data that is not like ImageNet.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Iterable

import numpy as np

from regnet_jax.data.catalog import resolve
from regnet_jax.data.sources import open_source, split_records

_BATCH = 256


@dataclasses.dataclass(frozen=True)
class ChannelStats:
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_images: int
  num_pixels: int

  def flags(self) -> str:
    def fmt(values):
      return "(" + ",".join(f"{v:.4f}" for v in values) + ("," if len(values) == 1 else "") + ")"
    return f'--config.mean="{fmt(self.mean)}" --config.std="{fmt(self.std)}"'


def channel_stats(images: Iterable[np.ndarray]) -> ChannelStats:
  """Mean and (population) std per channel over all pixels of uint8 HWC images of any sizes."""
  total = total_sq = None
  count = num_images = 0
  for image in images:
    pixels = np.asarray(image, np.float64).reshape(-1, image.shape[-1])
    total = pixels.sum(0) if total is None else total + pixels.sum(0)
    total_sq = (pixels ** 2).sum(0) if total_sq is None else total_sq + (pixels ** 2).sum(0)
    count += pixels.shape[0]
    num_images += 1
  if not num_images:
    raise ValueError("no images to compute statistics over")
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
  return ChannelStats(tuple(float(m) for m in mean), tuple(float(s) for s in std), num_images, count)


def _train_images(dataset: str, data_dir: str | None, max_images: int) -> Iterable[np.ndarray]:
  spec = resolve(dataset, data_dir=data_dir)
  if spec.variable_size:  # raw records at their own sizes, no crop
    records = split_records(spec, spec.train_split, data_dir, False)
    for i in range(min(len(records), max_images or len(records))):
      yield np.asarray(records[i]["image"])
    return
  source = open_source(spec, "train", data_dir=data_dir, download=False)
  n = min(source.num_examples, max_images or source.num_examples)
  for start in range(0, n, _BATCH):
    yield from source.batch(np.arange(start, min(start + _BATCH, n)))["image"]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m regnet_jax.data.stats", description=__doc__.splitlines()[0])
  parser.add_argument("dataset", help="a built-in name, folder:PATH or tfds:NAME[:VERSION]")
  parser.add_argument("--max_images", type=int, default=0, help="use the first N training images (0: all)")
  parser.add_argument("--data_dir", default=None, help="IDX files or TFDS data_dir, as --config.data_dir")
  args = parser.parse_args(argv)
  result = channel_stats(_train_images(args.dataset, args.data_dir, args.max_images))
  print(f"{args.dataset}: {result.num_images} training images, {result.num_pixels} pixels per channel")
  print(f"mean {', '.join(f'{v:.4f}' for v in result.mean)}  std {', '.join(f'{v:.4f}' for v in result.std)}")
  print(f"train with: {result.flags()}")


if __name__ == "__main__":
  main()
