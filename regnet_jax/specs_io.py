"""JSON-able dict <-> spec conversions: the trainer's `config.model_spec`, sweep results, saved specs.

The AnyNet dict is pycls's per-stage list form: `AnyNetSpec.from_lists(**d)` builds the spec back.
`spec_to_json` / `spec_from_json` wrap it in the JSON string the trainer reads from `config.model_spec`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from regnet_jax.specs import AnyNetSpec, RegNetSpec, SpecError

_LIST_KEYS = ("depths", "widths", "strides", "bot_muls", "group_ws")
_SCALAR_KEYS = ("stem_type", "stem_w", "block_type", "se_ratio", "head_w")
REGNET_KEYS = ("depth", "w0", "wa", "wm", "bot_mul", "group_w")


def spec_to_dict(spec: AnyNetSpec) -> dict[str, Any]:
  """{'depths': [...], 'widths': [...], 'strides': [...], 'bot_muls': [...], 'group_ws': [...], 'stem_type': ...}."""
  out: dict[str, Any] = {k: list(getattr(spec, k)) for k in _LIST_KEYS}
  out.update({k: getattr(spec, k) for k in _SCALAR_KEYS})
  return out


def spec_from_dict(d: Mapping[str, Any]) -> AnyNetSpec:
  """Inverse of `spec_to_dict`; also accepts an ml_collections ConfigDict. Validates like AnyNetSpec."""
  items = dict(d.items())
  unknown = sorted(set(items) - set(_LIST_KEYS) - set(_SCALAR_KEYS))
  if unknown:
    raise SpecError(f"model_spec has unknown key(s) {unknown}; allowed: {list(_LIST_KEYS + _SCALAR_KEYS)}")
  missing = [k for k in ("depths", "widths") if k not in items]
  if missing:
    raise SpecError(f"model_spec needs {missing}; got keys {sorted(items)}")
  lists = {k: tuple(items[k]) for k in _LIST_KEYS if items.get(k) is not None}
  scalars = {k: items[k] for k in _SCALAR_KEYS if items.get(k) is not None}
  lists["bot_muls"] = tuple(float(b) for b in lists.get("bot_muls", [1.0] * len(lists["depths"])))
  if "se_ratio" in scalars:
    scalars["se_ratio"] = float(scalars["se_ratio"])
  return AnyNetSpec.from_lists(**lists, **scalars)


def regnet_to_dict(params: RegNetSpec) -> dict[str, Any]:
  """The six RegNet design-space parameters: depth, w0, wa, wm, bot_mul, group_w."""
  return {k: getattr(params, k) for k in REGNET_KEYS}


def spec_to_json(spec: AnyNetSpec) -> str:
  """The string the trainer takes in `config.model_spec` (a ConfigDict field holds it unchanged)."""
  return json.dumps(spec_to_dict(spec), sort_keys=True)


def spec_from_json(text: str) -> AnyNetSpec:
  """Inverse of `spec_to_json`; a malformed string raises SpecError quoting it."""
  try:
    d = json.loads(text)
  except (TypeError, json.JSONDecodeError) as e:
    raise SpecError(f"model_spec={text!r} is not JSON ({e}); write it with regnet_jax.specs_io.spec_to_json") from None
  if not isinstance(d, dict):
    raise SpecError(f"model_spec={text!r} must be a JSON object with depths, widths, ...")
  return spec_from_dict(d)
