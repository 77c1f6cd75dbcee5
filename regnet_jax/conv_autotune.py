"""`conv_impl="auto"` on GPU: each grouped convolution's formulation is chosen by timing it on the device.

Why: XLA's grouped-convolution backward pass is slow on CUDA (jax-ml/jax#13800), so a dense cuDNN convolution
per group (`split`) can win, but by how much depends on the GPU, the groups and the batch, and this project has
no accelerator to fit a rule on. So `auto` measures, like PyTorch's `cudnn.benchmark`: at the first trace of a
grouped layer shape it times the forward pass and both gradients (`value_and_grad`) of that layer at its real
batch, size and dtype under each candidate, compiled once and timed `REPEATS` times (median), and keeps the
fastest, but takes a candidate other than `xla` only when its median is at least `MARGIN` (5%) below xla's: a
layer is never chosen slower than plain xla beyond timing noise, and a tie keeps the vendor's kernel.

Choices are kept in memory and in one JSON file per device kind under the cache directory
(`runtime.cache_root()`/conv_autotune), so later runs on the same kind of GPU reuse them without timing; each
entry keeps the measured milliseconds. Dense and 1x1 convolutions stay `xla` (cuDNN's). `REGNET_JAX_CONV_AUTOTUNE=0`
turns the timing off: grouped layers then use `xla` too. A choice made for a whole-step program can still differ
from the whole step's best (fusion across layers); benchmarks/device_check.py times `auto` against `xla` on whole
train steps to check that.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from regnet_jax import runtime

CANDIDATES = ("xla", "split", "custom_vjp")
MARGIN = 0.05
REPEATS = 5


@dataclasses.dataclass(frozen=True)
class ConvShape:
  """One grouped conv layer as it runs: NHWC input (batch, h, w, cin), HWIO kernel (k, k, cin/groups, cout)."""
  k: int
  stride: int
  groups: int
  cin: int
  cout: int
  h: int
  w: int
  batch: int
  dtype: str

  def key(self) -> str:
    return (f"k{self.k}s{self.stride}g{self.groups}c{self.cin}-{self.cout}hw{self.h}x{self.w}"
            f"n{self.batch}{self.dtype}")


def enabled(environ=os.environ) -> bool:
  value = environ.get("REGNET_JAX_CONV_AUTOTUNE", "1")
  if value not in ("0", "1"):
    raise ValueError(f"REGNET_JAX_CONV_AUTOTUNE={value!r} must be 1 (time grouped convs on GPU, the default) or 0 "
                     "(use xla for them)")
  return value == "1"


def pick(times_ms: dict[str, float], margin: float = MARGIN) -> str:
  """xla unless another candidate's time is at least `margin` below xla's; then the fastest."""
  best = min(times_ms, key=times_ms.get)
  if "xla" not in times_ms:
    return best
  return best if times_ms[best] <= (1 - margin) * times_ms["xla"] else "xla"


def time_candidate(impl: str, shape: ConvShape, repeats: int = REPEATS) -> float:
  """Median milliseconds of one forward + both gradients of the layer under `impl` on the default device."""
  from regnet_jax import convs  # convs imports this module
  rng = np.random.default_rng(0)
  x = rng.standard_normal((shape.batch, shape.h, shape.w, shape.cin), dtype=np.float32).astype(shape.dtype)
  kernel = (rng.standard_normal((shape.k, shape.k, shape.cin // shape.groups, shape.cout), dtype=np.float32)
            * 0.1).astype(shape.dtype)

  def loss(x, kernel):
    return convs.conv2d(x, kernel, stride=shape.stride, groups=shape.groups, impl=impl).astype(jnp.float32).sum()

  # Lowered from abstract shapes and run as a compiled executable: this runs while a model is being traced, and
  # a compiled call is not staged into that trace.
  spec = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, kernel)]
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*spec).compile()
  with jax.ensure_compile_time_eval():  # on the device now, not as an op of the model's trace
    args = [jax.device_put(a) for a in (x, kernel)]
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append((time.perf_counter() - t) * 1e3)
  return statistics.median(times)


def device_kind() -> str:
  d = jax.devices()[0]
  return f"{d.platform}-{getattr(d, 'device_kind', 'unknown')}"


class Tuner:
  """The choices for one device kind: in memory, backed by a JSON file (None: memory only)."""

  def __init__(self, path: str | None, timer: Callable[[str, ConvShape], float] = time_candidate,
               candidates: tuple[str, ...] = CANDIDATES):
    self.path, self.timer, self.candidates = path, timer, candidates
    self.entries: dict[str, dict] = {}
    if path and os.path.exists(path):
      try:
        with open(path) as f:
          loaded = json.load(f)
        if not isinstance(loaded, dict):
          raise ValueError("not a JSON object")
        self.entries = {k: v for k, v in loaded.items() if isinstance(v, dict) and v.get("impl") in candidates}
      except (OSError, ValueError) as e:
        # A bad cache costs only a re-measurement; it is rewritten on the next choice.
        print(f"warning: ignoring the conv autotune cache {path} ({e}); its layers are timed again",
              file=sys.stderr)

  def choose(self, shape: ConvShape) -> str:
    entry = self.entries.get(shape.key())
    if entry is not None:
      return entry["impl"]
    times = {impl: self.timer(impl, shape) for impl in self.candidates}
    impl = pick(times)
    self.entries[shape.key()] = {"impl": impl, "ms": times}
    self._save()
    return impl

  def _save(self) -> None:
    if not self.path:
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=os.path.dirname(self.path))
    with os.fdopen(fd, "w") as f:
      json.dump(self.entries, f, indent=1, sort_keys=True)
    os.replace(tmp, self.path)  # atomic: a concurrent reader sees the old file or the new one


_TUNERS: dict[str, Tuner] = {}


def default_path(kind: str) -> str:
  digest = hashlib.sha256(f"{kind}|{jax.__version__}".encode()).hexdigest()[:16]
  return os.path.join(runtime.cache_root(), "conv_autotune", f"{digest}.json")


def choose(shape: ConvShape) -> str:
  """The measured choice for this layer on the default device (see the module docstring)."""
  if not enabled():
    return "xla"
  kind = device_kind()
  if kind not in _TUNERS:
    _TUNERS[kind] = Tuner(default_path(kind))
  return _TUNERS[kind].choose(shape)
