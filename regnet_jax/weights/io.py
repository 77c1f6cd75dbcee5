"""Reading PyTorch checkpoint files, writing converted variables as a regnet_jax checkpoint, reading them back.

torch is imported only to read pickled .pth/.pyth/.pt files (never for .safetensors or .npz), so it stays an
optional tool, not a dependency.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from absl import logging
import numpy as np

from regnet_jax.specs import AnyNetSpec
from regnet_jax.weights import preprocessing as preprocessing_lib
from regnet_jax.weights.convert import _resolve, abstract_variables, from_torch_state_dict, to_numpy

TORCH_SUFFIXES = (".pth", ".pyth", ".pt", ".bin", ".ckpt")
# Keys under which training checkpoints keep the model's state dict: pycls, torch/Lightning convention, timm.
_WRAPPER_KEYS = ("model_state", "state_dict", "model", "state_dict_ema", "model_ema")
_DDP_PREFIX = "module."


def _is_state_dict(obj: Any) -> bool:
  return isinstance(obj, Mapping) and bool(obj) and all(
      isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items())


def unwrap_state_dict(obj: Any) -> tuple[dict, str | None]:
  """(state dict, the wrapper key it was found under or None). pycls .pyth files hold {'model_state': ...}."""
  if _is_state_dict(obj):
    state, found = dict(obj), None
  elif isinstance(obj, Mapping):
    found = next((k for k in _WRAPPER_KEYS if _is_state_dict(obj.get(k))), None)
    if found is None:
      raise ValueError(f"no state dict in this checkpoint: top-level keys {sorted(map(str, obj))[:20]}; expected "
                       f"tensors or one of {', '.join(_WRAPPER_KEYS)} holding them")
    state = dict(obj[found])
  else:
    raise ValueError(f"a checkpoint must hold a dict of tensors, got {type(obj).__name__}")
  # DataParallel / DistributedDataParallel saves prefix every key with 'module.'.
  if all(k.startswith(_DDP_PREFIX) for k in state):
    state = {k[len(_DDP_PREFIX):]: v for k, v in state.items()}
  return state, found


def load_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """A checkpoint file's state dict as numpy arrays (.pth/.pyth/.pt via torch, .safetensors, .npz).

  Pickled files are read with torch.load(weights_only=True) unless allow_pickle=True (only for files you trust:
  unpickling runs code).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file {path!r}")
  lower = path.lower()
  if lower.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file
    except ImportError as e:
      raise ImportError(f"reading {path} needs the safetensors package: pip install safetensors") from e
    obj = load_file(path)
  elif lower.endswith(".npz"):
    with np.load(path, allow_pickle=False) as npz:
      obj = {k: npz[k] for k in npz.files}
  elif lower.endswith(TORCH_SUFFIXES):
    try:
      import torch  # pylint: disable=import-outside-toplevel  # optional, only to unpickle torch files
    except ImportError as e:
      raise ImportError(
          f"reading {path} needs PyTorch (pip install torch, CPU wheel is enough; it is not a regnet_jax "
          "dependency). Alternatively save the state dict as .safetensors or .npz elsewhere and convert that.") from e
    try:
      obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # pylint: disable=broad-except  # torch raises UnpicklingError and friends
      if allow_pickle:
        raise
      raise ValueError(f"torch.load(weights_only=True) refused {path}: {str(e).splitlines()[0]}. If you trust the "
                       "file, pass --allow_pickle.") from e
  else:
    raise ValueError(f"unknown checkpoint type {path!r}; expected one of "
                     f"{', '.join(TORCH_SUFFIXES + ('.safetensors', '.npz'))}")
  state, _ = unwrap_state_dict(obj)
  return {k: to_numpy(v) for k, v in state.items()}


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def convert_checkpoint(*, source: str, model: str, checkpoint: str | os.PathLike, out: str | os.PathLike,
                       rgb_input: bool = False, preprocessing: str | None = None, num_classes: int | None = None,
                       allow_pickle: bool = False) -> dict:
  """Reads `checkpoint`, converts it for zoo `model` and writes a variables checkpoint to `out`.

  `out` is then usable as `--config.init_from=out` (fine-tuning or eval_only). Returns the metadata written with
  it: source, model, checkpoint path and sha256, rgb_input, num_classes and the eval preprocessing.
  """
  from regnet_jax import checkpointing  # orbax; imported here so that the converter core stays light

  checkpoint = os.path.abspath(os.fspath(checkpoint))
  state_dict = load_state_dict(checkpoint, allow_pickle=allow_pickle)
  variables = from_torch_state_dict(state_dict, model, source, rgb_input=rgb_input, num_classes=num_classes)
  name = preprocessing or preprocessing_lib.default_preset(source, rgb_input)
  if source == "pycls" and preprocessing and rgb_input != (preprocessing_lib.preset(name).channel_order == "RGB"):
    raise ValueError(f"preprocessing={name!r} has channel order {preprocessing_lib.preset(name).channel_order}, "
                     f"but rgb_input={rgb_input} makes the model take {'RGB' if rgb_input else 'BGR'}")
  eval_pre = preprocessing_lib.preset(name).to_dict() if name else None
  metadata = {
      "converted_weights": {
          "source": source,
          "model": model,
          "checkpoint": checkpoint,
          "sha256": _sha256(checkpoint),
          "rgb_input": bool(rgb_input),
          "num_classes": int(np.shape(variables["params"]["head"]["fc"]["kernel"])[1]),
          "input_channel_order": "BGR" if source == "pycls" and not rgb_input else "RGB",
      },
      "eval_preprocessing": eval_pre,
      "eval_preprocessing_preset": name,
  }
  checkpointing.save_variables(out, variables, metadata=metadata)
  return metadata


def restore_variables(directory: str | os.PathLike, model: str | AnyNetSpec, *, features_only: bool = False,
                      num_classes: int = 1000, in_channels: int = 3, sharding: Any = None) -> dict:
  """{'params', 'batch_stats'} of `model` from a regnet_jax checkpoint directory: the `out` of
  `convert_checkpoint` (or `python -m regnet_jax.weights convert`), or a training run's checkpoints.

  features_only: for `anynet.build_model(spec, features_only=True)`: the classifier head's variables (of any
  num_classes) are not read, which is logged once; every other variable must be there with its shape.
  sharding: a jax Sharding for every array (default: the first device).
  """
  import jax  # pylint: disable=import-outside-toplevel  # the converter core stays jax-free at import
  from regnet_jax import checkpointing  # orbax, as in convert_checkpoint

  spec, name = _resolve(model)
  abstract = abstract_variables(spec, num_classes, in_channels, features_only=features_only)
  sharding = sharding if sharding is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
  # Partial restore: the leaves the abstract tree lacks (the head when features_only) are never read.
  variables = checkpointing.restore_params_only(directory, abstract)
  if features_only:
    full = abstract_variables(spec, num_classes, in_channels)
    head = [f"{c}/head/{jax.tree_util.keystr(path, simple=True, separator='/')}" for c in ("params", "batch_stats")
            for path, _ in jax.tree_util.tree_leaves_with_path(full[c].get("head", {}))]
    logging.info("features_only: the %d head variables of %s in %s are not read (%s)", len(head), name,
                 os.fspath(directory), ", ".join(head))
  return variables
