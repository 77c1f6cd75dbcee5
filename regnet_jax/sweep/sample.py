"""python -m regnet_jax.sweep.sample --space=NAME --n=N [--flops=LO,HI] [--params=LO,HI] [--acts=LO,HI]
                                      [--image-size=224] [--channels=3] [--num-classes=1000] [--seed=S] [--json]

Prints N distinct models of a design space whose analytic complexity lies in the given bounds (flops are
multiply-adds, as in pycls; numbers take K/M/G suffixes: --flops=360M,400M). --json prints a JSON list with
`space`, `depths`, `widths`, `bot_muls`, `group_widths`, `regnet` (RegNet spaces), `flops`, `params`, `acts` and
`spec` (the dict `spec_from_dict` reads).
"""

from __future__ import annotations

import argparse
import json
import sys

from regnet_jax.sweep.sampling import Regime, RegimeError, sample_space
from regnet_jax.sweep.spaces import SpaceError, get_space, space_names

_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}


def parse_number(text: str) -> float:
  t = text.strip().lower()
  scale = _SUFFIX.get(t[-1:], 1.0)
  try:
    return float(t[:-1] if scale != 1.0 else t) * scale
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 4e8, 400M, 0.4G)") from None


def parse_bounds(text: str) -> tuple[float, float]:
  parts = text.split(",")
  if len(parts) != 2:
    raise argparse.ArgumentTypeError(f"{text!r} must be LOW,HIGH (e.g. 360M,400M)")
  lo, hi = (parse_number(p) for p in parts)
  if not 0 <= lo <= hi:
    raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= LOW <= HIGH")
  return lo, hi


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m regnet_jax.sweep.sample", description=__doc__.split("\n\n")[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--space", required=True, help=f"one of {', '.join(space_names())}")
  parser.add_argument("--n", type=int, default=10, help="models to sample")
  parser.add_argument("--flops", type=parse_bounds, help="LOW,HIGH multiply-adds")
  parser.add_argument("--params", type=parse_bounds, help="LOW,HIGH parameters")
  parser.add_argument("--acts", type=parse_bounds, help="LOW,HIGH activations")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
  args = parser.parse_args(argv)
  try:
    space = get_space(args.space)
    regime = Regime(flops=args.flops, params=args.params, acts=args.acts, image_size=args.image_size,
                    channels=args.channels, num_classes=args.num_classes)
    samples = sample_space(space, args.n, regime, args.seed)
  except (SpaceError, RegimeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps([s.to_dict() for s in samples], indent=1))
    return 0
  print(f"{'#':>3} {'depths':<16} {'widths':<24} {'b':<14} {'g':<16} {'MF':>9} {'M params':>9} {'M acts':>7}")
  for i, s in enumerate(samples):
    bs = tuple(int(round(1 / b)) for b in s.spec.bot_muls)
    print(f"{i:>3} {str(s.spec.depths):<16} {str(s.spec.widths):<24} {str(bs):<14} {str(s.spec.group_ws):<16} "
          f"{s.flops / 1e6:>9.2f} {s.params / 1e6:>9.3f} {s.acts / 1e6:>7.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
