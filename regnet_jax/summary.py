"""d2l-style layer summary of a zoo model: output shapes after the stem, each stage and the head.

Shapes come from the real Flax model through `jax.eval_shape` (nothing is allocated); the parameter count is
the real trainable count; flops/params/acts are the analytic (pycls) numbers.

  python -m regnet_jax.summary regnetx32 --image-size=96 --channels=1 --num-classes=10
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import jax
import jax.numpy as jnp

from regnet_jax import anynet, zoo
from regnet_jax.complexity import complexity


def summarize(name: str, *, image_size: int = 224, channels: int = 3, num_classes: int = 1000) -> dict:
  for field, value in (("image_size", image_size), ("channels", channels), ("num_classes", num_classes)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{field}={value!r} must be a positive integer")
  spec = zoo.get_spec(name)
  model = anynet.build_model(spec, num_classes=num_classes, conv_impl="xla")
  x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  _, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]), variables, x)
  inter = state["intermediates"]
  order = ["stem"] + [f"s{i}" for i in range(1, len(spec.stages) + 1)] + ["head"]
  shapes = [[layer, list(inter[f"{layer}_out"][0].shape[1:])] for layer in order]
  cx = complexity(spec, image_size=image_size, channels=channels, num_classes=num_classes)
  return {
      "name": name,
      "image_size": image_size,
      "channels": channels,
      "num_classes": num_classes,
      "shapes": shapes,
      "param_count": sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"])),
      "flops": cx.flops,
      "params": cx.params,
      "acts": cx.acts,
  }


def format_summary(s: dict) -> str:
  lines = [f"{s['name']}  input {s['image_size']}x{s['image_size']}x{s['channels']}, {s['num_classes']} classes",
           f"{'layer':<8} output shape (H, W, C without batch)"]
  lines += [f"{layer:<8} {tuple(shape)}" for layer, shape in s["shapes"]]
  lines.append(f"trainable parameters: {s['param_count']:,}")
  lines.append(f"analytic: {s['flops']:,} flops (multiply-adds), {s['params']:,} params, {s['acts']:,} acts")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m regnet_jax.summary", description=__doc__.split("\n")[0])
  parser.add_argument("model", help="zoo name, e.g. regnetx32, regnety_3.2gf (python -m regnet_jax.zoo lists all)")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  try:
    s = summarize(args.model, image_size=args.image_size, channels=args.channels, num_classes=args.num_classes)
  except (zoo.UnknownModelError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(s) if args.json else format_summary(s))
  return 0


if __name__ == "__main__":
  sys.exit(main())
