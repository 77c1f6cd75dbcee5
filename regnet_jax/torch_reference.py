"""The same AnyNet in PyTorch (pycls module names), for side-by-side benchmarks. Needs the `compare` extra.

Its state dict has pycls's keys, so `regnet_jax.weights.to_torch_state_dict(variables, spec, "pycls")` loads Flax
weights into it: the benchmark's reference is checked to be the same network (tests/test_bench.py).

  python -m regnet_jax.torch_reference --model=regnetx32 --batch-size=128 --image-size=96 --channels=1 \
      --num-classes=10 --json        # times a train step: forward, backward, SGD (Nesterov, wd), BN statistics
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

from regnet_jax import step_args, zoo
from regnet_jax.specs import AnyNetSpec


def peak_rss_mb() -> float:
  """This process's peak resident memory. VmHWM, not ru_maxrss: ru_maxrss survives exec, so a subprocess started
  from a large parent would report the parent's peak."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(spec: AnyNetSpec, *, num_classes: int, in_channels: int):
  import torch
  from torch import nn

  if spec.block_type != "bottleneck" or spec.stem_type != "simple" or spec.head_w:
    raise ValueError("the PyTorch reference builds bottleneck AnyNets with the simple stem and no head conv")

  def conv(w_in, w_out, k, stride=1, groups=1, bias=False):
    return nn.Conv2d(w_in, w_out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=bias)

  def bn(c):
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)

  class SE(nn.Module):
    def __init__(self, w, w_se):
      super().__init__()
      self.avg_pool = nn.AdaptiveAvgPool2d(1)
      self.f_ex = nn.Sequential(conv(w, w_se, 1, bias=True), nn.ReLU(), conv(w_se, w, 1, bias=True), nn.Sigmoid())

    def forward(self, x):
      return x * self.f_ex(self.avg_pool(x))

  class Transform(nn.Module):
    def __init__(self, w_in, w_out, stride, bot_mul, group_w, se_ratio):
      super().__init__()
      w_b = int(round(w_out * bot_mul))
      w_se = int(round(w_in * se_ratio))
      self.a, self.a_bn, self.a_af = conv(w_in, w_b, 1), bn(w_b), nn.ReLU()
      self.b, self.b_bn, self.b_af = conv(w_b, w_b, 3, stride, w_b // group_w), bn(w_b), nn.ReLU()
      self.se = SE(w_b, w_se) if w_se else None
      self.c, self.c_bn = conv(w_b, w_out, 1), bn(w_out)

    def forward(self, x):
      x = self.b_af(self.b_bn(self.b(self.a_af(self.a_bn(self.a(x))))))
      if self.se is not None:
        x = self.se(x)
      return self.c_bn(self.c(x))

  class Block(nn.Module):
    def __init__(self, w_in, w_out, stride, **kw):
      super().__init__()
      self.proj = self.bn = None
      if w_in != w_out or stride != 1:
        self.proj, self.bn = conv(w_in, w_out, 1, stride), bn(w_out)
      self.f = Transform(w_in, w_out, stride, **kw)
      self.af = nn.ReLU()

    def forward(self, x):
      shortcut = x if self.proj is None else self.bn(self.proj(x))
      return self.af(shortcut + self.f(x))

  class Stem(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv, self.bn, self.af = conv(in_channels, spec.stem_w, 3, 2), bn(spec.stem_w), nn.ReLU()

    def forward(self, x):
      return self.af(self.bn(self.conv(x)))

  class Head(nn.Module):
    def __init__(self, w_in):
      super().__init__()
      self.avg_pool = nn.AdaptiveAvgPool2d(1)
      self.fc = nn.Linear(w_in, num_classes)

    def forward(self, x):
      return self.fc(torch.flatten(self.avg_pool(x), 1))

  # nn.Sequential of named children gives pycls's keys: stem.conv.weight, s1.b1.f.a.weight, head.fc.weight, ...
  net = nn.Sequential()
  net.add_module("stem", Stem())
  w_in = spec.stem_w
  for i, s in enumerate(spec.stages, start=1):
    stage = nn.Sequential()
    for j in range(1, s.depth + 1):
      stage.add_module(f"b{j}", Block(w_in, s.width, s.stride if j == 1 else 1, bot_mul=s.bot_mul,
                                      group_w=s.group_w, se_ratio=spec.se_ratio))
      w_in = s.width
    net.add_module(f"s{i}", stage)
  net.add_module("head", Head(w_in))
  return net


def make_step(name: str, *, batch_size: int, image_size: int, channels: int, num_classes: int, mode: str = "train",
              channels_last: bool = True, bf16: bool = False):
  """(step, impl): `step()` runs one train step (forward, loss, backward, SGD Nesterov with weight decay, BN
  statistics) or, for mode="eval", one forward under `torch.inference_mode()`, on a fixed random batch.

  `bf16`: torch.autocast("cpu", bfloat16) around the forward pass and loss, f32 parameters and optimiser
  (the counterpart of our half_precision)."""
  import contextlib

  import torch

  spec = zoo.get_spec(name)
  net = build(spec, num_classes=num_classes, in_channels=channels)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  net = net.to(memory_format=fmt)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-5)
  x = torch.randn(batch_size, channels, image_size, image_size).to(memory_format=fmt)
  y = torch.randint(0, num_classes, (batch_size,))
  loss_fn = torch.nn.CrossEntropyLoss()

  def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

  def step():
    if mode == "train":
      opt.zero_grad(set_to_none=True)
      with autocast():
        loss = loss_fn(net(x), y)
      loss.backward()
      opt.step()
    else:
      with torch.inference_mode(), autocast():
        net(x)

  net.train(mode == "train")
  impl = f"pytorch eager{' channels_last' if channels_last else ''}{' autocast bf16' if bf16 else ''}"
  return step, impl


def time_train_step(name: str, *, batch_size: int, image_size: int, channels: int, num_classes: int, steps: int,
                    warmup: int, mode: str = "train", channels_last: bool = True, bf16: bool = False) -> dict:
  """Median and best of `steps` timed steps of `make_step` after `warmup` untimed ones."""
  import torch

  step, impl = make_step(name, batch_size=batch_size, image_size=image_size, channels=channels,
                         num_classes=num_classes, mode=mode, channels_last=channels_last, bf16=bf16)
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  return {"impl": impl, "torch": torch.__version__,
          "threads": torch.get_num_threads(), "step_s_median": med, "step_s_min": min(times),
          "img_per_s": batch_size / med, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m regnet_jax.torch_reference")
  step_args.add_step_args(p)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--nchw", action="store_true", help="contiguous NCHW instead of channels_last")
  p.add_argument("--bf16", action="store_true", help="torch.autocast bfloat16 (f32 parameters)")
  p.add_argument("--json", action="store_true")
  a = p.parse_args(argv)
  r = time_train_step(a.model, batch_size=a.batch_size, image_size=a.image_size, channels=a.channels,
                      num_classes=a.num_classes, steps=a.steps, warmup=a.warmup, mode=a.mode,
                      channels_last=not a.nchw, bf16=a.bf16)
  print(json.dumps(r) if a.json else f"{r['impl']}: {r['img_per_s']:.1f} img/s, median step {r['step_s_median']:.3f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
