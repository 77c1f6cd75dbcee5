"""PyTorch RegNet state dicts (torchvision, timm, pycls) <-> Flax variables of a zoo model.

`from_torch_state_dict` is strict both ways: every tensor of the state dict is used and every Flax variable is
filled. Anything else raises `WeightConversionError` listing the missing keys, the unexpected keys and the
wrong shapes (with the expected shapes), plus a hint when the keys look like another source's or the shapes like
another zoo model's. With `features_only=True` (for `anynet.build_model(..., features_only=True)`) the head's
tensors are ignored, and that is logged once; the rest stays as strict. torch is never imported here: values may
be numpy arrays or torch tensors (converted through their own `.numpy()`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from absl import logging
import numpy as np

from regnet_jax import zoo
from regnet_jax.specs import AnyNetSpec
from regnet_jax.weights import keymaps
from regnet_jax.weights.keymaps import BN_EXTRA_BUFFER, SOURCES, check_source

_MAX_LISTED = 20  # keys listed per kind of mismatch in an error message
_INIT_IMAGE_SIZE = 64  # parameter shapes do not depend on it; any size the stride-32 network accepts


class WeightConversionError(ValueError):
  """The state dict does not match the model: `missing`, `unexpected` and `wrong_shape` hold the details."""

  def __init__(self, message: str, *, missing=(), unexpected=(), wrong_shape=()):
    super().__init__(message)
    self.missing = tuple(missing)  # (torch key, expected torch shape)
    self.unexpected = tuple(unexpected)  # (torch key, shape)
    self.wrong_shape = tuple(wrong_shape)  # (torch key, shape, expected torch shape)


def _resolve(model: str | AnyNetSpec) -> tuple[AnyNetSpec, str]:
  if isinstance(model, AnyNetSpec):
    return model, "the given AnyNetSpec"
  if isinstance(model, str):
    return zoo.get_spec(model), model
  raise TypeError(f"model must be a zoo name or an AnyNetSpec, got {type(model).__name__}")


@functools.lru_cache(maxsize=64)
def abstract_variables(spec: AnyNetSpec, num_classes: int = 1000, in_channels: int = 3, *,
                       features_only: bool = False) -> dict:
  """Shapes and dtypes of the model's {'params', 'batch_stats'} (jax.ShapeDtypeStruct leaves, no compute).

  features_only: the backbone's (no head; the same for every out_indices, see anynet).
  """
  import jax
  import jax.numpy as jnp

  from regnet_jax import anynet

  net = anynet.build_model(spec, num_classes=num_classes, conv_impl="xla", features_only=features_only)
  x = jax.ShapeDtypeStruct((1, _INIT_IMAGE_SIZE, _INIT_IMAGE_SIZE, in_channels), jnp.float32)
  variables = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), x)
  return {k: variables[k] for k in ("params", "batch_stats")}


def _flat(tree: Mapping, prefix: tuple = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(flax_shape) == 4:  # HWIO -> OIHW
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:  # (in, out) -> (out, in)
    return (flax_shape[1], flax_shape[0])
  return tuple(flax_shape)


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:
    return array.T
  return array


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return np.transpose(array, (3, 2, 0, 1))
  if array.ndim == 2:
    return array.T
  return array


def to_numpy(value: Any) -> np.ndarray:
  """numpy view of a numpy array, jax array or torch tensor (bf16/f16 tensors are widened to f32)."""
  if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point() and str(value.dtype) != "torch.float64":
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _shape(value: Any) -> tuple[int, ...]:
  return tuple(int(d) for d in getattr(value, "shape", np.shape(value)))


def _check_layout(spec: AnyNetSpec, source: str) -> None:
  if source != "pycls" and (spec.block_type != "bottleneck" or spec.stem_type != "simple"):
    raise ValueError(f"{source} RegNets have the simple stem and bottleneck blocks; this model has "
                     f"stem_type={spec.stem_type!r}, block_type={spec.block_type!r} (only source='pycls' "
                     "names other layouts)")


def _stem_key(source: str) -> str:
  return keymaps.torch_key(source, "params", ("stem", "conv", "kernel"))


def _fc_key(source: str) -> str:
  return keymaps.torch_key(source, "params", ("head", "fc", "kernel"))


def expected_keys(model: str | AnyNetSpec, source: str, *, num_classes: int = 1000,
                  in_channels: int = 3) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
  """torch key -> (Flax collection, Flax path, torch shape) for every variable of the model.

  BatchNorm's `num_batches_tracked` buffers are not listed: they are optional and ignored.
  """
  check_source(source)
  spec, _ = _resolve(model)
  _check_layout(spec, source)
  abstract = abstract_variables(spec, num_classes, in_channels)
  out = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in _flat(abstract[collection]).items():
      key = keymaps.torch_key(source, collection, path, spec.block_type)
      if key in out:  # would mean two Flax variables share a torch name: a key-map bug
        raise AssertionError(f"{key} names both {out[key][:2]} and {(collection, path)}")
      out[key] = (collection, path, _torch_shape(tuple(leaf.shape)))
  return out


def guess_source(keys) -> str | None:
  """The source whose naming the keys follow (by the stem and first-block names), or None."""
  keys = set(keys)
  if "stem.0.weight" in keys or any(k.startswith("trunk_output.") for k in keys):
    return "torchvision"
  if any(k.startswith("s1.b1.conv1.") for k in keys):
    return "timm"
  if any(k.startswith("s1.b1.f.") or k.startswith("s1.b1.a.") for k in keys):
    return "pycls"
  return None


def matching_models(state_dict: Mapping[str, Any], source: str) -> list[str]:
  """Zoo names whose variables this state dict fills exactly (same keys and shapes)."""
  shapes = {k: _shape(v) for k, v in state_dict.items() if not k.endswith(BN_EXTRA_BUFFER)}
  num_classes, in_channels = _infer_classes_channels(state_dict, source)
  fc = shapes.get(_fc_key(source))
  names = []
  for name in zoo.model_names():
    if fc is not None and len(fc) == 2 and zoo.get_spec(name).widths[-1] != fc[1]:
      continue  # cheap filter on the last stage's width before tracing the model
    try:
      expected = expected_keys(name, source, num_classes=num_classes, in_channels=in_channels)
    except ValueError:
      continue
    if {k: v[2] for k, v in expected.items()} == shapes:
      names.append(name)
  return names


def _infer_classes_channels(state_dict: Mapping[str, Any], source: str) -> tuple[int, int]:
  fc, stem = state_dict.get(_fc_key(source)), state_dict.get(_stem_key(source))
  num_classes = _shape(fc)[0] if fc is not None and len(_shape(fc)) == 2 else 1000
  in_channels = _shape(stem)[1] if stem is not None and len(_shape(stem)) == 4 else 3
  return num_classes, in_channels


def _listing(title: str, lines: list[str]) -> str:
  if not lines:
    return ""
  more = f"\n    ... and {len(lines) - _MAX_LISTED} more" if len(lines) > _MAX_LISTED else ""
  return f"\n  {title} ({len(lines)}):\n    " + "\n    ".join(lines[:_MAX_LISTED]) + more


def _head_keys(expected: Mapping[str, tuple]) -> set[str]:
  """The torch keys of the head's variables, with the BN step counters of its optional conv's BN."""
  keys = {k for k, (_, path, _) in expected.items() if path[0] == "head"}
  return keys | {k.rsplit(".", 1)[0] + "." + BN_EXTRA_BUFFER for k in keys if k.endswith(".running_mean")}


def from_torch_state_dict(state_dict: Mapping[str, Any], model: str | AnyNetSpec, source: str, *,
                          rgb_input: bool = False, num_classes: int | None = None,
                          dtype: Any = np.float32, features_only: bool = False) -> dict:
  """Flax variables {'params', 'batch_stats'} of `model` from a PyTorch RegNet state dict.

  Args:
    state_dict: torch key -> numpy array or torch tensor (a torchvision/timm `model.state_dict()`, or a pycls
      checkpoint's `model_state`).
    model: a zoo name (`python -m regnet_jax.zoo`) or an AnyNetSpec.
    source: 'torchvision', 'timm' or 'pycls': the naming of the state dict (see `keymaps`).
    rgb_input: pycls only. pycls weights were trained on BGR images; True reverses the stem kernel's input
      channels so that the converted model takes RGB images (normalised with the same per-colour mean/std).
      torchvision and timm weights already take RGB.
    num_classes: defaults to the head's output size in the state dict.
    dtype: dtype of the returned arrays.
    features_only: variables for the backbone (`anynet.build_model(spec, features_only=True)`): no head. The
      state dict's head tensors (any number of classes, or none at all) are ignored, which is logged once;
      every other tensor is as strictly checked as without it.

  Returns numpy arrays in the unrolled `sI_bJ` layout (use `anynet.stack_block_params` for `scan_blocks`), ready
  for `model.apply(variables, images_nhwc, train=False)` with
  `anynet.build_model(zoo.get_spec(name), num_classes=num_classes)`.
  """
  check_source(source)
  if rgb_input and source != "pycls":
    raise ValueError(f"rgb_input=True flips BGR pycls weights to RGB; {source} weights already take RGB input")
  spec, model_name = _resolve(model)
  inferred_classes, in_channels = _infer_classes_channels(state_dict, source)
  num_classes = inferred_classes if num_classes is None else num_classes
  expected = expected_keys(spec, source, num_classes=num_classes, in_channels=in_channels)
  ignored: set[str] = set()
  if features_only:
    head = _head_keys(expected)
    expected = {k: v for k, v in expected.items() if k not in head}
    ignored = head & set(state_dict)  # whatever their shapes: the head is not converted

  missing, wrong_shape, flat = [], [], {}
  for key, (collection, path, shape) in expected.items():
    if key not in state_dict:
      missing.append((key, shape))
      continue
    got = _shape(state_dict[key])
    if got != shape:
      wrong_shape.append((key, got, shape))
      continue
    flat[(collection,) + path] = _to_flax_layout(to_numpy(state_dict[key])).astype(dtype)
  bn_buffers = {k.rsplit(".", 1)[0] + "." + BN_EXTRA_BUFFER for k in expected if k.endswith(".running_mean")}
  unexpected = [(k, _shape(v)) for k, v in state_dict.items()
                if k not in expected and k not in bn_buffers and k not in ignored]

  if missing or unexpected or wrong_shape:
    lines = (_listing("missing", [f"{k} (expected shape {s})" for k, s in missing])
             + _listing("unexpected", [f"{k} shape {s}" for k, s in unexpected])
             + _listing("wrong shape", [f"{k}: got {g}, expected {s}" for k, g, s in wrong_shape]))
    hints = []
    guessed = guess_source(state_dict)
    if guessed is not None and guessed != source:
      hints.append(f"the keys look like a {guessed!r} checkpoint: pass source={guessed!r}")
    else:
      others = [n for n in matching_models(state_dict, source) if n != model_name]
      if others:
        hints.append(f"the keys and shapes match zoo model(s) {', '.join(others)}")
    target = "features_only" if features_only else f"num_classes={num_classes}"
    raise WeightConversionError(
        f"{source} state dict does not match {model_name} ({target}): {len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(wrong_shape)} wrong shape{lines}"
        + "".join(f"\n  hint: {h}" for h in hints),
        missing=missing, unexpected=unexpected, wrong_shape=wrong_shape)

  if ignored:
    logging.info("features_only: ignored the %d head tensors of the %s state dict for %s (%s)", len(ignored), source,
                 model_name, ", ".join(sorted(ignored)))
  if rgb_input:
    stem = ("params", "stem", "conv", "kernel")
    flat[stem] = np.ascontiguousarray(flat[stem][:, :, ::-1, :])
  variables = _unflat(flat)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def to_torch_state_dict(variables: Mapping, model: str | AnyNetSpec, source: str, *, rgb_input: bool = False,
                        num_batches_tracked: bool = True) -> dict[str, np.ndarray]:
  """The inverse of `from_torch_state_dict`: numpy arrays named and laid out as `source` names them.

  `num_batches_tracked` adds BatchNorm's int64 step counters (0) so that torch's strict `load_state_dict` accepts
  the dict; `rgb_input=True` (pycls) means the variables take RGB and the pycls weights should take BGR.
  """
  check_source(source)
  if rgb_input and source != "pycls":
    raise ValueError(f"rgb_input only applies to source='pycls', not {source!r}")
  spec, _ = _resolve(model)
  flat = {c: _flat(variables[c]) for c in ("params", "batch_stats") if c in variables}
  params = flat["params"]
  num_classes = int(np.shape(params[("head", "fc", "kernel")])[1])
  in_channels = int(np.shape(params[("stem", "conv", "kernel")])[2])
  out = {}
  for key, (collection, path, shape) in expected_keys(spec, source, num_classes=num_classes,
                                                      in_channels=in_channels).items():
    value = np.asarray(flat[collection][path])
    if rgb_input and path == ("stem", "conv", "kernel"):
      value = value[:, :, ::-1, :]
    value = np.ascontiguousarray(_to_torch_layout(value))
    if value.shape != shape:
      raise WeightConversionError(f"{collection}/{'/'.join(path)} has shape {value.shape} (torch layout), "
                                  f"expected {shape} for {key}")
    out[key] = value
    if key.endswith(".running_mean") and num_batches_tracked:
      out[key.rsplit(".", 1)[0] + "." + BN_EXTRA_BUFFER] = np.zeros((), np.int64)
  return out


__all__ = ["SOURCES", "WeightConversionError", "abstract_variables", "expected_keys", "from_torch_state_dict",
           "guess_source", "matching_models", "to_numpy", "to_torch_state_dict"]
