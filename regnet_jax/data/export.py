"""Write a built-in dataset (or some of its classes) as an ImageFolder tree of PNG files.

    python -m regnet_jax.data.export fashion_mnist /tmp/fmnist_5to9 --classes=5,6,7,8,9

gives /tmp/fmnist_5to9/{train,val}/<class name>/<index>.png, the layout `--config.dataset=folder:PATH` reads: a
real image folder to try fine-tuning and the folder pipeline on, and the test suite's fixture. Labels in the new
folder follow the sorted class-folder names, as torchvision's ImageFolder does.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np
from PIL import Image

from regnet_jax.data.sources import ArraySource, open_source

FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle_boot")
CLASS_NAMES = {"fashion_mnist": FASHION_MNIST_CLASSES,
               "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")}


def write_image_folder(images: np.ndarray, labels: np.ndarray, root: str, split: str,
                       class_names: Sequence[str]) -> int:
  """Writes uint8 NHWC `images` as root/split/class_names[label]/NNNNN.png; returns the number written."""
  for name in sorted(set(class_names[int(label)] for label in labels)):
    os.makedirs(os.path.join(root, split, name), exist_ok=True)
  for i, (image, label) in enumerate(zip(images, labels)):
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(os.path.join(root, split, class_names[int(label)], f"{i:05d}.png"))
  return len(labels)


def export(dataset: str, out: str, *, classes: Sequence[int] | None = None, data_dir: str | None = None,
           limit: int = 0) -> dict[str, int]:
  """Exports the train and eval splits of an in-memory built-in dataset; returns images written per split."""
  names = CLASS_NAMES.get(dataset)
  if names is None:
    raise ValueError(f"export knows the class names of {sorted(CLASS_NAMES)}, not {dataset!r}")
  written = {}
  for kind, split in (("train", "train"), ("eval", "val")):
    source = open_source(dataset, kind, data_dir=data_dir)
    if not isinstance(source, ArraySource):
      raise ValueError(f"{dataset} is not held in memory here; export reads the IDX files (--data_dir)")
    keep = np.ones(source.num_examples, bool) if classes is None else np.isin(source.labels, list(classes))
    rows = np.flatnonzero(keep)[:limit or None]
    written[split] = write_image_folder(source.images[rows], source.labels[rows], out, split, names)
  return written


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m regnet_jax.data.export", description=__doc__.splitlines()[0])
  parser.add_argument("dataset", help="a built-in in-memory dataset: " + ", ".join(sorted(CLASS_NAMES)))
  parser.add_argument("out", help="the folder to write (train/ and val/ inside)")
  parser.add_argument("--classes", default="", help="comma-separated label numbers to export (default: all)")
  parser.add_argument("--data_dir", default=None, help="where the dataset's files are (default: the usual places)")
  parser.add_argument("--limit", type=int, default=0, help="at most this many images per split (0: all)")
  args = parser.parse_args(argv)
  classes = [int(c) for c in args.classes.split(",")] if args.classes else None
  counts = export(args.dataset, args.out, classes=classes, data_dir=args.data_dir, limit=args.limit)
  print(f"wrote {counts} images under {args.out}")


if __name__ == "__main__":
  main()
