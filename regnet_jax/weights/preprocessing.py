"""Evaluation preprocessing each published weight set was scored with, as data.

Every preset: resize the shorter side to `resize_size`, take the centred `crop_size` square, scale to [0, 1],
normalise with ImageNet's per-colour mean/std, and hand the model channels in `channel_order`. `mean` and `std`
are per colour in RGB order and [0, 255] pixel units (as `regnet_jax.data` keeps them); a BGR model gets the
same per-colour statistics in reversed channel order, which is what pycls does (it decodes BGR with OpenCV and
normalises with BGR-ordered statistics). Normalising in RGB and then reversing the channel axis is identical.

  preset                   resize  crop  order  interpolation  for
  pycls                     256     224   BGR    bilinear       pycls model-zoo .pyth weights as published
  pycls_rgb                 256     224   RGB    bilinear       pycls weights converted with rgb_input=True
  torchvision_v1            256     224   RGB    bilinear       torchvision IMAGENET1K_V1
  torchvision_v2            232     224   RGB    bilinear       torchvision IMAGENET1K_V2
  torchvision_swag_e2e      384     384   RGB    bicubic        torchvision IMAGENET1K_SWAG_E2E_V1 (y_16gf, y_32gf)
  torchvision_swag_linear   224     224   RGB    bicubic        torchvision IMAGENET1K_SWAG_LINEAR_V1

pycls resizes with OpenCV's bilinear (no antialiasing), torchvision with PIL / antialiased bilinear; the crop
geometry is the same. timm stores its own per-weight settings (`pretrained_cfg`): use `from_timm_pretrained_cfg`.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping

CHANNEL_ORDERS = ("RGB", "BGR")
INTERPOLATIONS = ("bilinear", "bicubic")
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # RGB, [0, 255] units
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclasses.dataclass(frozen=True)
class EvalPreprocessing:
  """Shorter side -> resize_size, centre crop crop_size, (x - mean) / std, channels in channel_order."""

  resize_size: int
  crop_size: int
  channel_order: str = "RGB"  # the order the model's stem expects
  mean: tuple[float, float, float] = IMAGENET_MEAN  # per colour, RGB order, [0, 255] units
  std: tuple[float, float, float] = IMAGENET_STD
  interpolation: str = "bilinear"

  def __post_init__(self):
    if not 0 < self.crop_size <= self.resize_size:
      raise ValueError(f"need 0 < crop_size <= resize_size, got crop_size={self.crop_size}, "
                       f"resize_size={self.resize_size}")
    if self.channel_order not in CHANNEL_ORDERS:
      raise ValueError(f"channel_order={self.channel_order!r}; one of {', '.join(CHANNEL_ORDERS)}")
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f"interpolation={self.interpolation!r}; one of {', '.join(INTERPOLATIONS)}")
    if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
      raise ValueError(f"mean and std need 3 values (std > 0), got mean={self.mean}, std={self.std}")

  @property
  def crop_pct(self) -> float:
    return self.crop_size / self.resize_size

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def config_overrides(self) -> dict:
    """The training-config fields this preset sets (`--config.KEY=VALUE`)."""
    return {"image_size": self.crop_size, "eval_resize": self.resize_size, "channel_order": self.channel_order}


PYCLS = EvalPreprocessing(resize_size=256, crop_size=224, channel_order="BGR")
PYCLS_RGB = dataclasses.replace(PYCLS, channel_order="RGB")
TORCHVISION_V1 = EvalPreprocessing(resize_size=256, crop_size=224)
TORCHVISION_V2 = EvalPreprocessing(resize_size=232, crop_size=224)
TORCHVISION_SWAG_E2E = EvalPreprocessing(resize_size=384, crop_size=384, interpolation="bicubic")
TORCHVISION_SWAG_LINEAR = EvalPreprocessing(resize_size=224, crop_size=224, interpolation="bicubic")

PRESETS: Mapping[str, EvalPreprocessing] = types.MappingProxyType({
    "pycls": PYCLS,
    "pycls_rgb": PYCLS_RGB,
    "torchvision_v1": TORCHVISION_V1,
    "torchvision_v2": TORCHVISION_V2,
    "torchvision_swag_e2e": TORCHVISION_SWAG_E2E,
    "torchvision_swag_linear": TORCHVISION_SWAG_LINEAR,
})


def preset(name: str) -> EvalPreprocessing:
  if name not in PRESETS:
    raise ValueError(f"unknown preprocessing preset {name!r}; known: {', '.join(PRESETS)}")
  return PRESETS[name]


def default_preset(source: str, rgb_input: bool = False) -> str | None:
  """The preset for a weight source when nothing else is known (None for timm: it varies per weight tag)."""
  if source == "pycls":
    return "pycls_rgb" if rgb_input else "pycls"
  if source == "torchvision":
    return "torchvision_v1"
  return None


def from_timm_pretrained_cfg(cfg: Mapping, *, test: bool = False) -> EvalPreprocessing:
  """timm's `model.pretrained_cfg` (a dict) -> EvalPreprocessing, as timm's eval transform computes it.

  resize = floor(crop / crop_pct), crop = input_size (test_input_size / test_crop_pct with test=True).
  """
  size_key, pct_key = ("test_input_size", "test_crop_pct") if test else ("input_size", "crop_pct")
  input_size = cfg.get(size_key) or cfg["input_size"]
  crop_pct = cfg.get(pct_key) or cfg.get("crop_pct") or 0.875
  crop = int(input_size[-1])
  return EvalPreprocessing(
      resize_size=int(math.floor(crop / crop_pct)), crop_size=crop, channel_order="RGB",
      mean=tuple(float(m) * 255 for m in cfg.get("mean", (0.485, 0.456, 0.406))),
      std=tuple(float(s) * 255 for s in cfg.get("std", (0.229, 0.224, 0.225))),
      interpolation=cfg.get("interpolation", "bilinear"))
