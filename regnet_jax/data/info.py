"""What the rest of the code base may know about a dataset.

`DatasetSpec` holds the static facts (classes, channels, normalisation, split
names); `DatasetInfo` adds the example counts, which are read from the data
actually present (mocked TFDS datasets, for instance, are small).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping

# ImageNet RGB statistics in [0, 255] pixel units (pycls keeps them in BGR order).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# For grey images: the mean of the three (timm's convention for 1-channel inputs).
IMAGENET_GREY_MEAN = (sum(IMAGENET_MEAN) / 3,)
IMAGENET_GREY_STD = (sum(IMAGENET_STD) / 3,)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static facts about a supported dataset."""

  name: str
  num_classes: int
  channels: int
  mean: tuple[float, ...]  # per channel, [0, 255] pixel units
  std: tuple[float, ...]
  train_split: str
  eval_split: str
  # Variable image sizes: the host must crop/resize to a fixed size before batching.
  variable_size: bool
  # Appended to "dataset not found" errors.
  how_to_get: str
  # Where the data comes from: "builtin" (the names below), "folder" (an ImageFolder tree at `location`) or
  # "tfds" (any prepared TFDS dataset; `location` is "NAME[:VERSION]").
  kind: str = "builtin"
  location: str = ""
  classes: tuple[str, ...] = ()  # class names in label order, where the data names them
  skip_bad_images: bool = False  # image folders: leave undecodable files out instead of failing


DATASETS: Mapping[str, DatasetSpec] = types.MappingProxyType({
  "fashion_mnist": DatasetSpec(
    name="fashion_mnist",
    num_classes=10,
    channels=1,
    # Computed over the 60,000 training images.
    mean=(72.94035223214286,),
    std=(90.02118235130526,),
    train_split="train",
    eval_split="test",
    variable_size=False,
    how_to_get=(
      "Get Fashion-MNIST in one of three ways: (1) `apt-get update && apt-get install -y "
      "dataset-fashion-mnist` (installs the IDX files under /usr/share/datasets/fashion-mnist/); "
      "(2) put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
      "t10k-labels-idx1-ubyte.gz in a directory and pass it as --config.data_dir=DIR; (3) on a machine "
      "with internet and tensorflow installed (pip install tensorflow-cpu), TFDS downloads and prepares "
      "`fashion_mnist` itself into data_dir (default ~/tensorflow_datasets)."
    ),
  ),
  "cifar10": DatasetSpec(
    name="cifar10",
    num_classes=10,
    channels=3,
    # pycls's CIFAR-10 statistics.
    mean=(125.3, 123.0, 113.9),
    std=(63.0, 62.1, 66.7),
    train_split="train",
    eval_split="test",
    variable_size=False,
    how_to_get=(
      "Prepare TFDS `cifar10` in array_record format: on a machine with internet and tensorflow "
      "(pip install tensorflow-cpu), run `tfds build cifar10 --file_format=array_record "
      "--data_dir=DIR` (or let this program download it) and pass --config.data_dir=DIR."
    ),
  ),
  "imagenet2012": DatasetSpec(
    name="imagenet2012",
    num_classes=1000,
    channels=3,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    train_split="train",
    eval_split="validation",
    variable_size=True,
    how_to_get=(
      "ImageNet needs a manual download: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from "
      "https://image-net.org/download-images) in DIR/downloads/manual/, then with tensorflow installed "
      "(pip install tensorflow-cpu) run `tfds build imagenet2012 --file_format=array_record "
      "--data_dir=DIR` and pass --config.data_dir=DIR."
    ),
  ),
})


DATASET_FORMS = ("folder:PATH", "tfds:NAME[:VERSION]")


def dataset_spec(name: str) -> DatasetSpec:
  """Returns the static facts of a built-in dataset; unknown names raise ValueError."""
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}, or "
                     f"{' / '.join(DATASET_FORMS)} for your own data") from None


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """A dataset as the model and training loop see it."""

  name: str
  num_classes: int
  channels: int
  num_train: int
  num_eval: int
  mean: tuple[float, ...]  # per channel, [0, 255] pixel units, applied on device
  std: tuple[float, ...]
