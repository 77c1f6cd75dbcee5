"""Equivalence checks against the PyTorch reference models (tests and scripts/check_all_weights.py).

Needs torch and torchvision / timm, imported inside the functions: this module can be imported without them.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from regnet_jax.weights import names
from regnet_jax.weights.convert import from_torch_state_dict


def build_torch_model(source: str, zoo_name: str, *, num_classes: int = 1000):
  """The torchvision / timm model equal to a zoo model, randomly initialised, on the CPU."""
  torch_name = names.source_name(zoo_name, source)
  if source == "torchvision":
    import torchvision
    return getattr(torchvision.models, torch_name)(num_classes=num_classes)
  import timm
  return timm.create_model(torch_name, pretrained=False, num_classes=num_classes)


def randomize_(model, seed: int = 0):
  """Random BN affine parameters and running statistics (variances > 0), random biases, eval mode.

  Default inits (BN 1/0, zero biases, timm's zero-init of the last BN) would let a swapped or dropped tensor go
  unnoticed. Conv and dense weights are redrawn N(0, 1/fan_in) so activations and logits stay O(1) whatever the
  library's init (timm's divides the fan-out by the groups, which makes deep X models' logits ~1e4) and an
  absolute tolerance means the same for every model.
  """
  import torch

  gen = torch.Generator().manual_seed(seed)

  def rand(shape, lo, hi):
    return torch.rand(shape, generator=gen) * (hi - lo) + lo

  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.copy_(rand(module.weight.shape, 0.5, 1.5))
        module.bias.copy_(rand(module.bias.shape, -0.2, 0.2))
        module.running_mean.copy_(rand(module.running_mean.shape, -0.2, 0.2))
        module.running_var.copy_(rand(module.running_var.shape, 0.5, 1.5))
      elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
        fan_in = math.prod(module.weight.shape[1:])
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / math.sqrt(fan_in))
        if module.bias is not None:
          module.bias.copy_(rand(module.bias.shape, -0.2, 0.2))
  return model.eval()


@dataclasses.dataclass(frozen=True)
class Comparison:
  max_abs_diff: float
  max_abs_logit: float
  torch_seconds: float
  jax_seconds: float
  num_params: int


def compare_logits(torch_model, state_dict_source: str, zoo_name: str, *, state_dict=None, batch: int = 2,
                   height: int = 72, width: int = 88, seed: int = 1, rgb_input: bool = False,
                   flip_torch_input: bool = False) -> Comparison:
  """Converts `state_dict` (default: the torch model's) and compares logits on one random NCHW batch.

  The default 72x88 input is non-square (catches H/W mix-ups) and makes some stride-2 convs see odd sizes.
  `flip_torch_input` feeds torch BGR (reversed channels), for checking rgb_input=True conversions.
  """
  import jax
  import torch

  from regnet_jax import anynet, zoo

  gen = torch.Generator().manual_seed(seed)
  x = torch.randn(batch, 3, height, width, generator=gen)
  t0 = time.perf_counter()
  with torch.no_grad():
    ref = torch_model(x.flip(1) if flip_torch_input else x).numpy()
  t1 = time.perf_counter()
  state_dict = torch_model.state_dict() if state_dict is None else state_dict
  variables = from_torch_state_dict(state_dict, zoo_name, state_dict_source, rgb_input=rgb_input)
  net = anynet.build_model(zoo.get_spec(zoo_name), num_classes=ref.shape[-1], conv_impl="xla")
  out = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x.numpy().transpose(0, 2, 3, 1)))
  t2 = time.perf_counter()
  num_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
  return Comparison(max_abs_diff=float(np.max(np.abs(out - ref))), max_abs_logit=float(np.max(np.abs(ref))),
                    torch_seconds=t1 - t0, jax_seconds=t2 - t1, num_params=num_params)
