"""regnet_jax: exact RegNet/AnyNet networks and the design-space method in JAX/Flax.

Names are imported lazily so `python -m regnet_jax.<tool>` does not import the tool module twice.
"""

import importlib

_EXPORTS = {
    "AnyNet": "regnet_jax.anynet", "build_model": "regnet_jax.anynet",
    "Complexity": "regnet_jax.complexity", "complexity": "regnet_jax.complexity",
    "regnet_to_anynet": "regnet_jax.regnet",
    "AnyNetSpec": "regnet_jax.specs", "RegNetSpec": "regnet_jax.specs", "SpecError": "regnet_jax.specs",
    "StageSpec": "regnet_jax.specs",
    "UnknownModelError": "regnet_jax.zoo", "get_spec": "regnet_jax.zoo", "model_names": "regnet_jax.zoo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'regnet_jax' has no attribute {name!r}")
