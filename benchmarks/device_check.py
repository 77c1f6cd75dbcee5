"""One accelerator check: our train step under every GPU conv_impl against timm on the same device, in one run.

  python benchmarks/device_check.py [--models=regnetx_3.2gf,regnety_3.2gf] [--batch-size=128] [--image-size=224]
      [--impls=xla,auto,split,custom_vjp,im2col] [--dtypes=f32,bf16] [--steps=10] [--warmup=3]
      [--peak-tflops-f32=X --peak-tflops-bf16=Y] [--budget-s=420] [--out=device_check.jsonl]

Run through benchmarks/device_check.sh on a machine with one NVIDIA GPU (JAX, PyTorch and timm installed). Each
row is one JSON line, written as soon as it is measured, so a run cut short keeps what it finished:
  ours   regnet_jax.bench's train step (the real jitted step, donated state) per model x conv_impl x dtype:
         img/s, compile s, achieved TFLOP/s (3 x forward multiply-adds x 2) and MFU against --peak-tflops-*
  auto_vs_xla  auto's img/s over xla's per model x dtype; `ok` when auto is within 5% of xla or faster
  timm   the same model in timm, SGD train step, under torch.autocast (bf16) or f32, channels_last and NCHW
Rows past --budget-s are skipped (and listed as skipped), so the whole check fits a device lease. The logic runs
on the CPU too (JAX_PLATFORMS=cpu, tiny sizes): tests/test_bench.py does that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from regnet_jax import bench, zoo
from regnet_jax.weights import names

GPU_IMPLS = ("xla", "split", "custom_vjp", "im2col")  # the conv formulations that run off the CPU
# auto times each grouped layer's candidates on the device at its first trace (regnet_jax/conv_autotune.py), so
# its compile_s includes that timing; its row is checked against xla's (auto_vs_xla).
CHECKED_IMPLS = ("xla", "auto") + GPU_IMPLS[1:]
AUTO_MIN_RATIO = 0.95


def auto_vs_xla(rows: list[dict]) -> list[dict]:
  """Per model and dtype with both rows: auto's img/s over xla's, and whether auto kept within 5% of xla."""
  out = []
  by = {(r["model"], r["dtype"], r.get("conv_impl")): r for r in rows if r.get("kind") == "ours" and "error" not in r}
  for (model, dtype, impl), r in by.items():
    xla = by.get((model, dtype, "xla"))
    if impl == "auto" and xla is not None:
      ratio = r["img_per_s"] / xla["img_per_s"]
      out.append({"kind": "auto_vs_xla", "model": model, "dtype": dtype, "ratio": ratio,
                  "ok": ratio >= AUTO_MIN_RATIO})
  return out


def timm_step(model: str, *, batch_size: int, image_size: int, dtype: str, channels_last: bool, steps: int,
              warmup: int) -> dict:
  """timm's model of the same name (its own weights layout, random init), one SGD train step timed per call."""
  import timm
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  net = timm.create_model(names.source_name(model, "timm"), pretrained=False).to(device)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  net = net.to(memory_format=fmt).train()
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
  x = torch.randn(batch_size, 3, image_size, image_size, device=device).to(memory_format=fmt)
  y = torch.randint(0, 1000, (batch_size,), device=device)
  amp = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")

  def sync():
    if device == "cuda":
      torch.cuda.synchronize()

  def step():
    opt.zero_grad(set_to_none=True)
    with amp:
      loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()

  for _ in range(warmup):
    step()
  sync()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  return {"kind": "timm", "model": model, "dtype": dtype, "layout": "channels_last" if channels_last else "nchw",
          "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
          "timm": timm.__version__, "step_s_median": med, "img_per_s": batch_size / med}


def _rows(a):
  for model in a.models:
    for dtype in a.dtypes:
      for impl in a.impls:
        yield ("ours", model, dtype, impl)
      for layout in ("channels_last", "nchw"):
        yield ("timm", model, dtype, layout)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="benchmarks/device_check.py", description=__doc__.split("\n")[0])
  p.add_argument("--models", default="regnetx_3.2gf,regnety_3.2gf")
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--impls", default=",".join(CHECKED_IMPLS))
  p.add_argument("--dtypes", default="f32,bf16")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--peak-tflops-f32", type=float, default=0.0, help="the device's f32 peak, for MFU (0: no MFU)")
  p.add_argument("--peak-tflops-bf16", type=float, default=0.0, help="the device's bf16 peak, for MFU")
  p.add_argument("--budget-s", type=float, default=420.0, help="skip the rows that would start after this")
  p.add_argument("--out", default="device_check.jsonl")
  a = p.parse_args(argv)
  a.models, a.impls, a.dtypes = a.models.split(","), a.impls.split(","), a.dtypes.split(",")
  bad = ([f"--impls: {i!r} is not one of {', '.join(CHECKED_IMPLS)}" for i in a.impls if i not in CHECKED_IMPLS]
         + [f"--dtypes: {d!r} is not f32 or bf16" for d in a.dtypes if d not in ("f32", "bf16")])
  for m in a.models:
    try:
      zoo.get_spec(m)
    except KeyError as e:
      bad.append(f"--models: {e}")
  if bad:
    print("error: " + "; ".join(bad), file=sys.stderr)
    return 2
  start, skipped, done = time.perf_counter(), [], []
  with open(a.out, "a") as out:
    for kind, model, dtype, which in _rows(a):
      if time.perf_counter() - start > a.budget_s:
        skipped.append(f"{kind}:{model}:{dtype}:{which}")
        continue
      try:
        if kind == "ours":
          r = bench.bench(model, batch_size=a.batch_size, image_size=a.image_size, conv_impl=which,
                          half_precision=dtype == "bf16", steps_=a.steps, warmup=a.warmup)
          r = dict(r, kind="ours", dtype=dtype, tflop_s=r["gflop_s"] / 1e3)
          peak = a.peak_tflops_bf16 if dtype == "bf16" else a.peak_tflops_f32
          if peak > 0:
            r["mfu"] = r["tflop_s"] / peak
        else:
          r = timm_step(model, batch_size=a.batch_size, image_size=a.image_size, dtype=dtype,
                        channels_last=which == "channels_last", steps=a.steps, warmup=a.warmup)
          flops = bench.step_flops_per_image(zoo.get_spec(model), "train", image_size=a.image_size)
          r["tflop_s"] = flops * r["img_per_s"] / 1e12
      except Exception as e:  # noqa: BLE001 (one failing row must not cost the others; it is reported)
        r = {"kind": kind, "model": model, "dtype": dtype, "which": which, "error": f"{type(e).__name__}: {e}"}
      out.write(json.dumps(r) + "\n")
      out.flush()
      done.append(r)
      label = r.get("conv_impl", r.get("layout", which))
      print(f"{kind:4s} {model} {dtype} {label}: " + (r["error"] if "error" in r else
            f"{r['img_per_s']:.1f} img/s" + (f", compile {r['compile_s']:.1f} s" if "compile_s" in r else "")
            + f", {r['tflop_s']:.2f} TFLOP/s" + (f", MFU {100 * r['mfu']:.1f}%" if "mfu" in r else "")),
            flush=True)
    for c in auto_vs_xla(done):
      out.write(json.dumps(c) + "\n")
      print(f"auto/xla {c['model']} {c['dtype']}: {c['ratio']:.3f}x img/s "
            + ("ok" if c["ok"] else f"AUTO SLOWER THAN XLA beyond {100 * (1 - AUTO_MIN_RATIO):.0f}%"), flush=True)
  if skipped:
    print(f"skipped past --budget-s={a.budget_s:.0f}: {', '.join(skipped)}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
