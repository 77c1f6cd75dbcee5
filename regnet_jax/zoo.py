"""Model zoo: name -> AnyNetSpec. pycls's dds_baselines RegNetX/Y, torchvision's rounding variants, d2l's RegNetX32.

Run `python -m regnet_jax.zoo` for a table of every model (or `--json`).
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Mapping

from regnet_jax.regnet import regnet_to_anynet
from regnet_jax.specs import AnyNetSpec, RegNetSpec, StageSpec

# (depth, w0, wa, wm, group_w) from pycls configs/dds_baselines/regnet{x,y}/*.yaml.
_REGNETX = {
    "200mf": (13, 24, 36.44, 2.49, 8),
    "400mf": (22, 24, 24.48, 2.54, 16),
    "600mf": (16, 48, 36.97, 2.24, 24),
    "800mf": (16, 56, 35.73, 2.28, 16),
    "1.6gf": (18, 80, 34.01, 2.25, 24),
    "3.2gf": (25, 88, 26.31, 2.25, 48),
    "4.0gf": (23, 96, 38.65, 2.43, 40),
    "6.4gf": (17, 184, 60.83, 2.07, 56),
    "8.0gf": (23, 80, 49.56, 2.88, 120),
    "12gf": (19, 168, 73.36, 2.37, 112),
    "16gf": (22, 216, 55.59, 2.1, 128),
    "32gf": (23, 320, 69.86, 2.0, 168),
}
_REGNETY = {
    "200mf": (13, 24, 36.44, 2.49, 8),
    "400mf": (16, 48, 27.89, 2.09, 8),
    "600mf": (15, 48, 32.54, 2.32, 16),
    "800mf": (14, 56, 38.84, 2.4, 16),
    "1.6gf": (27, 48, 20.71, 2.65, 24),
    "3.2gf": (21, 80, 42.63, 2.66, 24),
    "4.0gf": (22, 96, 31.41, 2.24, 64),
    "6.4gf": (25, 112, 33.22, 2.27, 72),
    "8.0gf": (17, 192, 76.82, 2.19, 56),
    "12gf": (19, 168, 73.36, 2.37, 112),
    "16gf": (18, 200, 106.23, 2.48, 112),
    "32gf": (20, 232, 115.89, 2.53, 232),
}
SE_RATIO = 0.25  # pycls REGNET.SE_R for the Y models
# torchvision's models whose `_make_divisible` rounding gives a different network than pycls's.
_TORCHVISION_VARIANTS = {"regnetx_400mf_tv": "regnetx_400mf", "regnety_800mf_tv": "regnety_800mf",
                         "regnety_8gf_tv": "regnety_8.0gf"}


def _regnet(params, se: bool, rounding: str = "pycls") -> RegNetSpec:
  depth, w0, wa, wm, group_w = params
  return RegNetSpec(depth=depth, w0=w0, wa=wa, wm=wm, group_w=group_w, se_ratio=SE_RATIO if se else 0.0,
                    rounding=rounding)


def _build_regnet_specs() -> dict[str, RegNetSpec]:
  specs = {}
  for family, table, se in (("regnetx", _REGNETX, False), ("regnety", _REGNETY, True)):
    for size, params in table.items():
      specs[f"{family}_{size}"] = _regnet(params, se)
  for tv_name, base in _TORCHVISION_VARIANTS.items():
    specs[tv_name] = specs[base].replace(rounding="torchvision")
  return specs


REGNET_SPECS: Mapping[str, RegNetSpec] = _build_regnet_specs()


def _d2l_regnet32(se_ratio: float) -> AnyNetSpec:
  # d2l "Designing Convolution Network Architectures": stem 32, two stages, depths (4, 6), widths (32, 80),
  # group width 16, bottleneck ratio 1.
  return AnyNetSpec.from_lists(depths=(4, 6), widths=(32, 80), group_ws=(16, 16), bot_muls=(1.0, 1.0),
                               stem_w=32, se_ratio=se_ratio)


def _build_zoo() -> dict[str, AnyNetSpec]:
  zoo = {name: regnet_to_anynet(spec) for name, spec in REGNET_SPECS.items()}
  zoo["regnetx32"] = _d2l_regnet32(0.0)
  zoo["regnety32"] = _d2l_regnet32(SE_RATIO)
  return zoo


ZOO: Mapping[str, AnyNetSpec] = _build_zoo()


class UnknownModelError(KeyError):
  """A model name that is not in the zoo."""

  def __str__(self):
    return str(self.args[0])


def model_names() -> tuple[str, ...]:
  return tuple(ZOO)


def get_spec(name: str) -> AnyNetSpec:
  """AnyNetSpec for a zoo name. An unknown name raises UnknownModelError listing the closest names."""
  key = name.strip().lower() if isinstance(name, str) else name
  if key in ZOO:
    return ZOO[key]
  close = difflib.get_close_matches(str(key), ZOO, n=5, cutoff=0.5)
  hint = f"closest: {', '.join(close)}; " if close else ""
  raise UnknownModelError(f"unknown model {name!r}; {hint}all known: {', '.join(ZOO)}")


def regnet_spec(name: str) -> RegNetSpec | None:
  """The RegNet parameters behind a zoo model, or None for AnyNet-only models (d2l's)."""
  get_spec(name)
  return REGNET_SPECS.get(name.strip().lower())


def _rows(image_size=224, channels=3, num_classes=1000):
  from regnet_jax.complexity import complexity
  for name, spec in ZOO.items():
    cx = complexity(spec, image_size=image_size, channels=channels, num_classes=num_classes)
    yield {
        "name": name,
        "stage_depths": list(spec.depths),
        "stage_widths": list(spec.widths),
        "stage_group_widths": list(spec.group_ws),
        "bot_muls": list(spec.bot_muls),
        "se_ratio": spec.se_ratio,
        "stem_w": spec.stem_w,
        "flops": cx.flops,
        "params": cx.params,
        "acts": cx.acts,
    }


def main(argv=None) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog="python -m regnet_jax.zoo",
                                   description="Every zoo model with its complexity (224x224x3 input, 1000 "
                                               "classes; flops are multiply-adds, as in pycls).")
  parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
  args = parser.parse_args(argv)
  rows = list(_rows())
  if args.json:
    print(json.dumps(rows, indent=1))
    return 0
  header = f"{'model':<18} {'depths':<16} {'widths':<24} {'group widths':<20} {'GF':>7} {'M params':>9} {'M acts':>7}"
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['name']:<18} {str(tuple(r['stage_depths'])):<16} {str(tuple(r['stage_widths'])):<24} "
          f"{str(tuple(r['stage_group_widths'])):<20} {r['flops'] / 1e9:>7.3f} {r['params'] / 1e6:>9.2f} "
          f"{r['acts'] / 1e6:>7.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
