"""Forward+backward microbenchmark of the conv formulations in regnet_jax.convs.

Two modes:
  layers (default): every distinct conv layer of a model at its train batch size; per layer and impl the median
      time of one jitted step computing y, dL/dx and dL/dkernel for a random cotangent (the stem computes no
      dL/dx, as in training), the ratio to xla, and what `auto` picks. TOTAL weights each row by how many such
      layers the model has. Optional PyTorch channels_last reference column (`--torch`).
  net (--net): a conv-only stand-in of the whole network (stem, X blocks a/b/c + projection shortcut, ReLUs,
      pooled linear head; no batch norm) with every conv in one impl, value_and_grad wrt all kernels; this is
      what "auto is within ~5% of the best single impl on a train step" is checked with.

Timings on shared machines vary 5-30%: impls are timed interleaved (round-robin) so load changes hit all alike;
compare ratios within one run, never across runs.

  .venv/bin/python benchmarks/conv_microbench.py --model regnetx32
  .venv/bin/python benchmarks/conv_microbench.py --model regnetx_400mf --impls split,im2col,custom_vjp,auto
  .venv/bin/python benchmarks/conv_microbench.py --model regnetx32 --net --reps 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from regnet_jax import convs  # noqa: E402

# Network shapes: input (size, channels), stem width, stages (depth, width, groups); X blocks, bottleneck 1.
NETS = {
    "regnetx32": dict(batch=128, size=96, cin=1, stem=32, stages=[(4, 32, 2), (6, 80, 5)]),
    "regnetx_400mf": dict(batch=32, size=224, cin=3, stem=32,
                          stages=[(1, 32, 2), (2, 64, 4), (7, 160, 10), (12, 384, 24)]),
}


def conv_layers(net):
  """Distinct conv layers of a net: {(spatial_in, cin, cout, k, stride, groups, is_stem): (name, count)}."""
  out = {}

  def add(name, *key):
    if key in out:
      out[key] = (out[key][0], out[key][1] + 1)
    else:
      out[key] = (name, 1)

  sp = net["size"]
  add(f"stem 3x3 s2 {net['cin']}->{net['stem']}", sp, net["cin"], net["stem"], 3, 2, 1, True)
  sp = (sp - 1) // 2 + 1
  w_in = net["stem"]
  for si, (depth, w, g) in enumerate(net["stages"], 1):
    for bi in range(depth):
      s = 2 if bi == 0 else 1
      add(f"s{si} a 1x1 {w_in}->{w} @{sp}", sp, w_in, w, 1, 1, 1, False)
      add(f"s{si} b 3x3 g{g}{' s2' if s == 2 else ''} @{sp}", sp, w, w, 3, s, g, False)
      so = (sp - 1) // s + 1
      add(f"s{si} c 1x1 {w}->{w} @{so}", so, w, w, 1, 1, 1, False)
      if s != 1 or w_in != w:
        add(f"s{si} proj 1x1 s{s} {w_in}->{w} @{sp}", sp, w_in, w, 1, s, 1, False)
      sp, w_in = so, w
  return out


def timed(fns, args, reps, seed=0):
  """{name: median seconds}: after one compile+warm-up call each, `reps` rounds that run every fn once, in a
  shuffled order per round (load changes and position effects hit all fns alike)."""
  for f in fns.values():
    jax.block_until_ready(f(*args))
  ts = {name: [] for name in fns}
  order = list(fns)
  rng = np.random.default_rng(seed)
  for _ in range(reps):
    rng.shuffle(order)
    for name in order:
      t0 = time.perf_counter()
      jax.block_until_ready(fns[name](*args))
      ts[name].append(time.perf_counter() - t0)
  return {name: statistics.median(v) for name, v in ts.items()}


def layer_step(impl, stride, groups, with_dx):
  def step(x, w, ct):
    if with_dx:
      y, vjp = jax.vjp(lambda a, b: convs.conv2d(a, b, stride=stride, groups=groups, impl=impl), x, w)
      return (y,) + vjp(ct)
    y, vjp = jax.vjp(lambda b: convs.conv2d(x, b, stride=stride, groups=groups, impl=impl), w)
    return (y,) + vjp(ct)
  return jax.jit(step)


def torch_layer_fn(n, sp, cin, cout, k, s, g, with_dx, threads):
  import torch
  torch.set_num_threads(threads)
  x = torch.randn(n, cin, sp, sp).to(memory_format=torch.channels_last).requires_grad_(with_dx)
  conv = torch.nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=g, bias=False).to(
      memory_format=torch.channels_last)
  so = (sp - 1) // s + 1
  ct = torch.randn(n, cout, so, so).to(memory_format=torch.channels_last)

  def run():
    x.grad = None
    conv.weight.grad = None
    conv(x).backward(ct)
  return run


def run_layers(name, net, impls, batch, reps, dtype, use_torch):
  n = batch or net["batch"]
  layers = conv_layers(net)
  cols = impls + (["torch"] if use_torch else [])
  print(f"\n# {name} layers, batch {n}, {jnp.dtype(dtype).name}, backend {jax.default_backend()}: "
        f"ms per fwd+bwd (y, dx, dw; stem: y, dw), (ratio to xla)")
  print(f"{'layer':30s} {'cnt':>3s} " + " ".join(f"{c:>15s}" for c in cols) + "   auto picks")
  rng = np.random.default_rng(0)
  totals = {c: 0.0 for c in cols}
  for (sp, cin, cout, k, s, g, is_stem), (lname, cnt) in layers.items():
    x = jnp.asarray(rng.normal(size=(n, sp, sp, cin)), dtype)
    w = jnp.asarray(rng.normal(size=(k, k, cin // g, cout)) / np.sqrt(k * k * cin // g), dtype)
    so = (sp - 1) // s + 1
    ct = jnp.asarray(rng.normal(size=(n, so, so, cout)), dtype)
    res = timed({i: layer_step(i, s, g, not is_stem) for i in impls}, (x, w, ct), reps)
    if use_torch:
      run = torch_layer_fn(n, sp, cin, cout, k, s, g, not is_stem, os.cpu_count())
      run()
      res["torch"] = statistics.median([_t(run) for _ in range(reps)])
    ref = res.get("xla")
    cells = [f"{res[c] * 1e3:8.1f}" + (f" ({res[c] / ref:4.2f})" if ref else "") for c in cols]
    auto = convs.resolve_impl("auto", k=k, stride=s, groups=g, cin=cin, cout=cout, spatial=sp)
    print(f"{lname:30s} {cnt:3d} " + " ".join(f"{c:>15s}" for c in cells) + f"   {auto}", flush=True)
    for c in cols:
      totals[c] += cnt * res[c]
  ref = totals.get("xla")
  print(f"{'TOTAL (x cnt)':30s}     " + " ".join(
      f"{totals[c] * 1e3:8.1f}" + (f" ({totals[c] / ref:4.2f})" if ref else "") for c in cols))


def _t(run):
  t0 = time.perf_counter()
  run()
  return time.perf_counter() - t0


def net_params(net, rng, dtype):
  def k(kk, cin, cout, g=1):
    return jnp.asarray(rng.normal(size=(kk, kk, cin // g, cout)) * np.sqrt(2 / (kk * kk * cin // g)), dtype)
  p = {"stem": k(3, net["cin"], net["stem"])}
  w_in = net["stem"]
  for si, (depth, w, g) in enumerate(net["stages"], 1):
    for bi in range(depth):
      b = {"a": k(1, w_in, w), "b": k(3, w, w, g), "c": k(1, w, w)}
      if bi == 0:
        b["proj"] = k(1, w_in, w)
      p[f"s{si}_b{bi + 1}"] = b
      w_in = w
  p["head"] = jnp.asarray(rng.normal(size=(w_in, 10)) / np.sqrt(w_in), dtype)
  return p


def net_loss(net, impl):
  def loss(p, x):
    h = jax.nn.relu(convs.conv2d(x, p["stem"], stride=2, impl=impl))
    for si, (depth, _, g) in enumerate(net["stages"], 1):
      for bi in range(depth):
        b = p[f"s{si}_b{bi + 1}"]
        s = 2 if bi == 0 else 1
        y = jax.nn.relu(convs.conv2d(h, b["a"], impl=impl))
        y = jax.nn.relu(convs.conv2d(y, b["b"], stride=s, groups=g, impl=impl))
        y = convs.conv2d(y, b["c"], impl=impl)
        sc = convs.conv2d(h, b["proj"], stride=s, impl=impl) if "proj" in b else h
        h = jax.nn.relu(y + sc)
    logits = jnp.mean(h.astype(jnp.float32), axis=(1, 2)) @ p["head"].astype(jnp.float32)
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])
  return loss


def run_net(name, net, impls, batch, reps, dtype):
  n = batch or net["batch"]
  rng = np.random.default_rng(0)
  params = net_params(net, rng, dtype)
  x = jnp.asarray(rng.normal(size=(n, net["size"], net["size"], net["cin"])), dtype)
  fns = {i: jax.jit(jax.value_and_grad(net_loss(net, i))) for i in impls}
  res = timed(fns, (params, x), reps)
  best = min(res.values())
  print(f"\n# {name} conv-only net, batch {n}, {jnp.dtype(dtype).name}, backend {jax.default_backend()}: "
        f"value_and_grad step")
  print(f"{'impl':12s} {'ms/step':>9s} {'img/s':>8s} {'/best':>6s}" + ("  /xla" if "xla" in res else ""))
  for i, t in res.items():
    print(f"{i:12s} {t * 1e3:9.1f} {n / t:8.1f} {t / best:6.2f}"
          + (f"  {t / res['xla']:4.2f}" if "xla" in res else ""))


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default="regnetx32", choices=sorted(NETS) + ["all"])
  ap.add_argument("--impls", default=",".join(convs.CONV_IMPLS + ("auto",)),
                  help="comma-separated, from %s and auto" % (convs.CONV_IMPLS,))
  ap.add_argument("--batch", type=int, default=0, help="override the model's train batch size")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--net", action="store_true", help="time the conv-only network stand-in instead")
  ap.add_argument("--torch", action="store_true", help="add a PyTorch channels_last column (layers mode)")
  args = ap.parse_args()
  impls = args.impls.split(",")
  for i in impls:
    convs.resolve_impl(i, k=1, stride=1, groups=1, cin=1, cout=1, spatial=1)  # validates names
  use_torch = False
  if args.torch:
    try:
      import torch  # noqa: F401
      use_torch = True
    except ImportError:
      print("torch not importable; skipping the PyTorch column")
  dtype = jnp.dtype(args.dtype)
  for name in (sorted(NETS) if args.model == "all" else [args.model]):
    if args.net:
      run_net(name, NETS[name], impls, args.batch, args.reps, dtype)
    else:
      run_layers(name, NETS[name], impls, args.batch, args.reps, dtype, use_torch)


if __name__ == "__main__":
  main()
