"""python -m regnet_jax.weights {convert,names}

  convert --source=S --model=NAME --checkpoint=FILE --out=DIR [--rgb_input] [--preprocessing=PRESET]
      Reads a torchvision / timm state dict or a pycls .pyth checkpoint (.pth/.pyth/.pt via torch, .safetensors,
      .npz), converts it for zoo model NAME (strict: every tensor used, every variable filled) and writes DIR for
      `python -m regnet_jax.main ... --config.init_from=DIR`.
  names
      Which torchvision / timm model equals which zoo model, and the eval preprocessing presets.
"""

from __future__ import annotations

import argparse
import json
import sys

from regnet_jax import zoo
from regnet_jax.weights import names as names_lib
from regnet_jax.weights import preprocessing as preprocessing_lib
from regnet_jax.weights.keymaps import SOURCES


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m regnet_jax.weights",
                                   description="Convert PyTorch RegNet weights (torchvision, timm, pycls).")
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="convert a checkpoint file into a regnet_jax variables checkpoint")
  conv.add_argument("--source", required=True, choices=SOURCES, help="naming of the checkpoint's keys")
  conv.add_argument("--model", required=True, help="zoo name (python -m regnet_jax.zoo); "
                    "see `names` for the torchvision / timm equivalents")
  conv.add_argument("--checkpoint", required=True, help=".pth/.pyth/.pt (needs torch), .safetensors or .npz")
  conv.add_argument("--out", required=True, help="output directory (new or holding only converted weights)")
  conv.add_argument("--rgb_input", action="store_true",
                    help="pycls only: flip the stem kernel's input channels so the model takes RGB, not BGR")
  conv.add_argument("--preprocessing", choices=tuple(preprocessing_lib.PRESETS), default=None,
                    help="eval preprocessing recorded with the weights (default: pycls / pycls_rgb for pycls, "
                    "torchvision_v1 for torchvision; pass torchvision_v2 for IMAGENET1K_V2 weights)")
  conv.add_argument("--num_classes", type=int, default=None, help="default: the checkpoint head's size")
  conv.add_argument("--allow_pickle", action="store_true",
                    help="torch.load with weights_only=False (trusted files only: unpickling runs code)")
  sub.add_parser("names", help="zoo <-> torchvision / timm model names and eval preprocessing presets")
  return parser


def _names() -> None:
  print(f"{'zoo model':<18} {'torchvision':<18} {'timm':<16}")
  print("-" * 52)
  for name in zoo.model_names():
    tv, tm = names_lib.TORCHVISION.get(name, "-"), names_lib.TIMM.get(name, "-")
    if tv != "-" or tm != "-":
      print(f"{name:<18} {tv:<18} {tm:<16}")
  print()
  print(f"{'preset':<25} {'resize':>6} {'crop':>5} {'order':>6} {'interpolation':>14}")
  for name, p in preprocessing_lib.PRESETS.items():
    print(f"{name:<25} {p.resize_size:>6} {p.crop_size:>5} {p.channel_order:>6} {p.interpolation:>14}")


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.command == "names":
    _names()
    return 0
  from regnet_jax.weights.io import convert_checkpoint  # jax / orbax only when converting
  try:
    metadata = convert_checkpoint(source=args.source, model=args.model, checkpoint=args.checkpoint, out=args.out,
                                  rgb_input=args.rgb_input, preprocessing=args.preprocessing,
                                  num_classes=args.num_classes, allow_pickle=args.allow_pickle)
  except (ValueError, KeyError, OSError, ImportError) as e:  # bad input: say what, without a traceback
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(metadata, indent=1))
  pre = metadata["eval_preprocessing"]
  flags = ""
  if pre:
    flags = f" --config.image_size={pre['crop_size']} --config.eval_resize={pre['resize_size']}"
  print(f"wrote {args.out}; evaluate with:\n  python -m regnet_jax.main --config=configs/imagenet.py:{args.model} "
        f"--config.eval_only=True --config.init_from={args.out}{flags} --workdir=WORKDIR")
  if pre and pre["channel_order"] == "BGR":
    print("  (these weights take BGR input: feed BGR, or convert again with --rgb_input)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
