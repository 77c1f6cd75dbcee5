"""Pretrained weights: torchvision, timm and pycls RegNet checkpoints -> Flax variables with equal logits.

  variables = from_torch_state_dict(state_dict, "regnety_3.2gf", "torchvision")
  model = anynet.build_model(zoo.get_spec("regnety_3.2gf"))
  logits = model.apply(variables, images_nhwc, train=False)

Command line: `python -m regnet_jax.weights convert --source=S --model=NAME --checkpoint=FILE --out=DIR` writes a
checkpoint for `--config.init_from=DIR`; `python -m regnet_jax.weights names` lists which torchvision / timm model
equals which zoo model and the eval preprocessing presets. See docs/weights.md.

torch is not a dependency: state dicts may hold numpy arrays, and torch is imported only to read .pth files.
"""

from regnet_jax.weights.convert import (SOURCES, WeightConversionError, abstract_variables, expected_keys,
                                        from_torch_state_dict, guess_source, matching_models, to_torch_state_dict)
from regnet_jax.weights.io import convert_checkpoint, load_state_dict, unwrap_state_dict
from regnet_jax.weights.names import TIMM, TORCHVISION, source_name, zoo_name
from regnet_jax.weights.preprocessing import (PRESETS, PYCLS, PYCLS_RGB, TORCHVISION_V1, TORCHVISION_V2,
                                              EvalPreprocessing, default_preset, from_timm_pretrained_cfg,
                                              preset)

__all__ = [
    "PRESETS", "PYCLS", "PYCLS_RGB", "SOURCES", "TIMM", "TORCHVISION", "TORCHVISION_V1", "TORCHVISION_V2",
    "EvalPreprocessing", "WeightConversionError", "abstract_variables", "convert_checkpoint", "default_preset",
    "expected_keys", "from_timm_pretrained_cfg", "from_torch_state_dict", "guess_source", "load_state_dict",
    "matching_models", "preset", "source_name", "to_torch_state_dict", "unwrap_state_dict", "zoo_name",
]
