"""Per-source names of every Flax variable: torchvision, timm and pycls RegNet state-dict keys.

A Flax variable is addressed by (collection, module path, leaf), e.g. ('params', ('s1_b1', 'b'), 'kernel'). The
module path is translated to the torch module prefix of the source; the leaf to the torch tensor name:

  Flax module     leaf            torch tensor      layout change
  Conv            kernel          weight            OIHW -> HWIO (grouped: O, I/g, kh, kw -> kh, kw, I/g, O)
  Conv (SE)       bias            bias              -
  BatchNorm       scale / bias    weight / bias     -
  batch_stats     mean / var      running_mean / running_var
  Dense           kernel / bias   weight / bias     (out, in) -> (in, out)

Block module names per source (sI_bJ is stage I, block J, both from 1):

  Flax          torchvision                               timm                   pycls
  stem/conv     stem.0                                    stem.conv              stem.conv
  stem/bn       stem.1                                    stem.bn                stem.bn
  sI_bJ         trunk_output.blockI.blockI-(J-1)          sI.bJ                  sI.bJ
    a, a_bn     f.a.0, f.a.1                              conv1.conv, conv1.bn   f.a, f.a_bn
    b, b_bn     f.b.0, f.b.1                              conv2.conv, conv2.bn   f.b, f.b_bn
    se/reduce   f.se.fc1                                  se.fc1                 f.se.f_ex.0
    se/expand   f.se.fc2                                  se.fc2                 f.se.f_ex.2
    c, c_bn     f.c.0, f.c.1                              conv3.conv, conv3.bn   f.c, f.c_bn
    proj, _bn   proj.0, proj.1                            downsample.conv, .bn   proj, bn
  head/conv(_bn)  -                                       final_conv.conv, .bn   head.conv, head.conv_bn
  head/fc       fc                                        head.fc                head.fc

pycls's vanilla block has no `f.` level (sI.bJ.a, sI.bJ.a_bn, ...); its basic block keeps `f.` like the
bottleneck. torchvision and timm only build bottleneck RegNets with the simple stem.
"""

from __future__ import annotations

import re

SOURCES = ("torchvision", "timm", "pycls")

_BLOCK_RE = re.compile(r"^s(\d+)_b(\d+)$")

_BLOCK_LAYERS = {
    "torchvision": {"a": "f.a.0", "a_bn": "f.a.1", "b": "f.b.0", "b_bn": "f.b.1", "c": "f.c.0", "c_bn": "f.c.1",
                    "proj": "proj.0", "proj_bn": "proj.1", "se/reduce": "f.se.fc1", "se/expand": "f.se.fc2"},
    "timm": {"a": "conv1.conv", "a_bn": "conv1.bn", "b": "conv2.conv", "b_bn": "conv2.bn", "c": "conv3.conv",
             "c_bn": "conv3.bn", "proj": "downsample.conv", "proj_bn": "downsample.bn", "se/reduce": "se.fc1",
             "se/expand": "se.fc2"},
    "pycls": {"a": "f.a", "a_bn": "f.a_bn", "b": "f.b", "b_bn": "f.b_bn", "c": "f.c", "c_bn": "f.c_bn",
              "proj": "proj", "proj_bn": "bn", "se/reduce": "f.se.f_ex.0", "se/expand": "f.se.f_ex.2"},
}
# pycls's VanillaBlock holds its layers directly (no `f` transform module).
_PYCLS_VANILLA = {"a": "a", "a_bn": "a_bn", "b": "b", "b_bn": "b_bn"}

_STEM = {
    "torchvision": {"conv": "stem.0", "bn": "stem.1"},
    "timm": {"conv": "stem.conv", "bn": "stem.bn"},
    "pycls": {"conv": "stem.conv", "bn": "stem.bn"},
}
_HEAD = {
    "torchvision": {"fc": "fc"},
    "timm": {"fc": "head.fc", "conv": "final_conv.conv", "conv_bn": "final_conv.bn"},
    "pycls": {"fc": "head.fc", "conv": "head.conv", "conv_bn": "head.conv_bn"},
}

# (collection, Flax leaf) -> torch tensor name.
_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# torch BatchNorm buffer with no Flax counterpart; consumed (not converted) for every BN the model has.
BN_EXTRA_BUFFER = "num_batches_tracked"


class KeyMapError(ValueError):
  """A Flax variable that has no name in the requested weight source."""


def check_source(source: str) -> str:
  if source not in SOURCES:
    raise ValueError(f"unknown weight source {source!r}; known: {', '.join(SOURCES)}")
  return source


def module_prefix(source: str, module_path: tuple[str, ...], block_type: str = "bottleneck") -> str:
  """Torch module prefix (dotted) of a Flax module path such as ('s2_b3', 'se', 'reduce')."""
  check_source(source)
  top, rest = module_path[0], "/".join(module_path[1:])
  table = None
  if top == "stem":
    table, prefix = _STEM[source], ""
  elif top == "head":
    table, prefix = _HEAD[source], ""
  elif m := _BLOCK_RE.match(top):
    stage, block = int(m.group(1)), int(m.group(2))
    if source == "torchvision":
      prefix = f"trunk_output.block{stage}.block{stage}-{block - 1}."
    else:
      prefix = f"s{stage}.b{block}."
    table = _PYCLS_VANILLA if (source == "pycls" and block_type == "vanilla") else _BLOCK_LAYERS[source]
  if table is None or rest not in table:
    raise KeyMapError(f"Flax module {'/'.join(module_path)!r} has no counterpart in {source} RegNet checkpoints"
                      f"{' (torchvision and timm RegNets have bottleneck blocks only)' if source != 'pycls' else ''}")
  return prefix + table[rest]


def torch_key(source: str, collection: str, path: tuple[str, ...], block_type: str = "bottleneck") -> str:
  """Torch state-dict key of the Flax variable `collection` / `path` (path ends with the leaf name)."""
  leaf = path[-1]
  if (collection, leaf) not in _LEAVES:
    raise KeyMapError(f"Flax variable {collection}/{'/'.join(path)} has no torch counterpart")
  return f"{module_prefix(source, tuple(path[:-1]), block_type)}.{_LEAVES[(collection, leaf)]}"
