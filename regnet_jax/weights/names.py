"""Which torchvision / timm constructor builds exactly which zoo model.

Exactly means: the same layers with the same shapes, so the converted weights give the same logits
(`scripts/check_all_weights.py` checks every pair below numerically; tests/test_weights.py a representative set).

torchvision rounds widths with `_make_divisible`, which changes three networks against pycls: those are the zoo's
`*_tv` models (regnetx_400mf_tv, regnety_800mf_tv, regnety_8gf_tv). For the others torchvision's rounding gives
pycls's network, so the plain zoo name is the match. torchvision's regnet_y_128gf (SWAG weights only) has no pycls
counterpart and is not in the zoo. timm names models by flops (regnetx_032 = RegNetX-3.2GF) with pycls's rounding
for bottleneck ratio 1, plus `_tv` variants of its own; regnetv_* (pre-activation), regnetz_*, regnety_040_sgn and
the SEER-size regnety_640/1280/2560 are other architectures and have no zoo model.
"""

from __future__ import annotations

import types

TORCHVISION = types.MappingProxyType({
    "regnetx_400mf_tv": "regnet_x_400mf",
    "regnetx_800mf": "regnet_x_800mf",
    "regnetx_1.6gf": "regnet_x_1_6gf",
    "regnetx_3.2gf": "regnet_x_3_2gf",
    "regnetx_8.0gf": "regnet_x_8gf",
    "regnetx_16gf": "regnet_x_16gf",
    "regnetx_32gf": "regnet_x_32gf",
    "regnety_400mf": "regnet_y_400mf",
    "regnety_800mf_tv": "regnet_y_800mf",
    "regnety_1.6gf": "regnet_y_1_6gf",
    "regnety_3.2gf": "regnet_y_3_2gf",
    "regnety_8gf_tv": "regnet_y_8gf",
    "regnety_16gf": "regnet_y_16gf",
    "regnety_32gf": "regnet_y_32gf",
})

_TIMM_SIZES = {"200mf": "002", "400mf": "004", "600mf": "006", "800mf": "008", "1.6gf": "016", "3.2gf": "032",
               "4.0gf": "040", "6.4gf": "064", "8.0gf": "080", "12gf": "120", "16gf": "160", "32gf": "320"}
TIMM = types.MappingProxyType({
    **{f"{family}_{size}": f"{family}_{code}" for family in ("regnetx", "regnety")
       for size, code in _TIMM_SIZES.items()},
    "regnetx_400mf_tv": "regnetx_004_tv",
    "regnety_800mf_tv": "regnety_008_tv",
    "regnety_8gf_tv": "regnety_080_tv",
})

_BY_SOURCE = {"torchvision": TORCHVISION, "timm": TIMM}


def _table(source: str):
  if source not in _BY_SOURCE:
    raise ValueError(f"unknown model-name source {source!r}; known: {', '.join(_BY_SOURCE)} (pycls names are the "
                     "zoo names)")
  return _BY_SOURCE[source]


def source_name(zoo_name: str, source: str) -> str:
  """torchvision / timm constructor name of a zoo model; ValueError naming the candidates if there is none."""
  table = _table(source)
  key = zoo_name.strip().lower()
  if key not in table:
    raise ValueError(f"{source} has no model equal to zoo model {zoo_name!r}; zoo models it builds: "
                     f"{', '.join(table)}")
  return table[key]


def zoo_name(name: str, source: str) -> str:
  """Zoo name of a torchvision / timm RegNet constructor name (timm tags like '.pycls_in1k' are ignored)."""
  table = _table(source)
  key = name.strip().lower().split(".", 1)[0] if source == "timm" else name.strip().lower()
  for zoo, other in table.items():
    if other == key:
      return zoo
  raise ValueError(f"{name!r} is not a {source} model of the zoo; known: {', '.join(table.values())}")
