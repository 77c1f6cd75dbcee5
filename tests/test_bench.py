"""The benchmark times the real training step, and its PyTorch reference is the same network."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax import anynet, bench, complexity, zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_reports_the_step():
  calls = []
  r = bench.bench("regnetx32", batch_size=8, image_size=32, channels=1, num_classes=10, steps_=2, warmup=1,
                  rounds=2, between_rounds=calls.append)
  assert calls == [0, 1] and len(r["round_step_s_median"]) == 2
  assert r["model"] == "regnetx32" and r["mode"] == "train" and r["conv_impl"] == r["bn_impl"] == "auto"
  assert r["compile_s"] > 0 and 0 < r["step_s_min"] <= r["step_s_median"]
  assert r["img_per_s"] == pytest.approx(8 / r["step_s_median"])
  assert r["peak_rss_mb"] > 100
  m = r["memory_mb"]  # the step's activations at batch 8, 32x32: a few MB of XLA temporaries, under the peak
  assert 0 < m["xla_temp"] < r["peak_rss_mb"] and 0 < m["rss_before_state"] <= m["rss_before_steps"]
  # 3 x forward multiply-adds x 2 flops per image (issue 5's convention), from the analytic complexity
  macs = complexity.complexity(zoo.get_spec("regnetx32"), image_size=32, channels=1, num_classes=10).flops
  assert r["gflop_s"] == pytest.approx(6 * macs * r["img_per_s"] / 1e9)


def test_peak_script_measures_gemm_and_bandwidth():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "peak.py"), "--sizes=64,128",
                        "--repeats=1", "--bandwidth-gib=0.01", "--json"], capture_output=True, text=True, check=True)
  r = json.loads(out.stdout)
  libs = {(g["dtype"], g["n"], g["lib"]) for g in r["gemm"]}
  assert {("f32", 64, "xla"), ("bf16", 128, "xla")} <= libs
  for dtype in ("f32", "bf16"):
    assert r[f"peak_{dtype}_gflop_s"] == max(g["gflop_s"] for g in r["gemm"] if g["dtype"] == dtype) > 0
  assert r["copy_gb_s"] > 0 and r["read_gb_s"] > 0
  bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "peak.py"), "--sizes=big"],
                       capture_output=True, text=True)
  assert bad.returncode == 2 and "--sizes='big' must be comma-separated integers" in bad.stderr


@pytest.mark.slow  # CI runs it (.ci/run: -m slow); the default suite stays near 10 minutes
def test_bench_cli_json_and_errors():
  out = subprocess.run([sys.executable, "-m", "regnet_jax.bench", "--model=regnety32", "--batch-size=4",
                        "--image-size=32", "--channels=1", "--num-classes=10", "--mode=eval", "--steps=1",
                        "--warmup=0", "--json"], capture_output=True, text=True, check=True).stdout
  r = json.loads(out)
  assert {"img_per_s", "step_s_median", "compile_s", "peak_rss_mb", "conv_impl", "bn_impl", "batch_size",
          "minor_faults_per_step", "glibc_tunables"} <= set(r)
  assert r["mode"] == "eval"
  bad = subprocess.run([sys.executable, "-m", "regnet_jax.bench", "--model=regnetx33"], capture_output=True,
                       text=True)
  assert bad.returncode == 2 and "closest: regnetx32" in bad.stderr
  bad = subprocess.run([sys.executable, "-m", "regnet_jax.bench", "--model=regnetx32", "--bn-impl=fused"],
                       capture_output=True, text=True)
  assert bad.returncode == 2 and "bn_impl" in bad.stderr


@pytest.mark.parametrize("name", ["regnetx32", "regnety32"])
def test_torch_reference_is_the_same_network(name):
  torch = pytest.importorskip("torch")
  from regnet_jax import torch_reference, weights
  spec = zoo.get_spec(name)
  net = torch_reference.build(spec, num_classes=10, in_channels=1).eval()
  model = anynet.build_model(spec, num_classes=10, conv_impl="xla")
  variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
  rng = np.random.default_rng(0)
  variables["batch_stats"] = jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32),
                                          variables["batch_stats"])
  state_dict = weights.to_torch_state_dict(variables, spec, "pycls")
  net.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in state_dict.items()}, strict=True)
  x = rng.normal(size=(2, 1, 32, 32)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.as_tensor(x)).numpy()
  got = np.asarray(model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False))
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # CI runs it (.ci/run: -m slow): two train-step compiles and two timm models
def test_device_check_logic_on_the_cpu(tmp_path):
  """benchmarks/device_check.sh as on a GPU machine, here on the CPU at tiny sizes: a row per conv_impl and per
  timm layout, each with its figures, and bad arguments refused."""
  pytest.importorskip("timm")
  out = tmp_path / "check.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable)
  r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_check.sh"), "", str(out)], env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [(row["kind"], row.get("conv_impl", row.get("layout"))) for row in rows] == [
      ("ours", "xla"), ("ours", "split"), ("timm", "channels_last"), ("timm", "nchw")], rows
  for row in rows:
    assert row["model"] == "regnetx_200mf" and row["dtype"] == "f32" and row["img_per_s"] > 0 and row["tflop_s"] > 0
  assert "device: cpu" in r.stdout and "ours regnetx_200mf f32 split:" in r.stdout
  bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "device_check.py"), "--impls=onednn",
                        "--models=regnetx33"], capture_output=True, text=True, env=env)
  assert bad.returncode == 2 and "'onednn' is not one of xla, auto, split, custom_vjp, im2col" in bad.stderr
  assert "closest: regnetx32" in bad.stderr


def test_device_check_flags_auto_slower_than_xla():
  import importlib.util
  spec = importlib.util.spec_from_file_location("device_check", os.path.join(ROOT, "benchmarks", "device_check.py"))
  dc = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(dc)
  row = lambda m, d, impl, ips: {"kind": "ours", "model": m, "dtype": d, "conv_impl": impl, "img_per_s": ips}
  rows = [row("a", "f32", "xla", 100.0), row("a", "f32", "auto", 96.0), row("a", "bf16", "xla", 100.0),
          row("a", "bf16", "auto", 90.0), row("b", "f32", "auto", 50.0),
          {"kind": "ours", "model": "b", "dtype": "f32", "which": "xla", "error": "OOM"}]
  got = {(c["model"], c["dtype"]): (round(c["ratio"], 2), c["ok"]) for c in dc.auto_vs_xla(rows)}
  assert got == {("a", "f32"): (0.96, True), ("a", "bf16"): (0.9, False)}


def test_profile_step_attributes_the_step_to_its_ops(tmp_path):
  """benchmarks/profile_step.py on a tiny train step: every oneDNN conv and native BN custom call is found in the
  trace and named by kind from the HLO, and their time is part of the traced wall time."""
  out = tmp_path / "profile.json"
  r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_step.py"), "--model=regnetx32",
                      "--batch-size=2", "--image-size=32", "--channels=1", "--num-classes=10", "--steps=2",
                      "--warmup=1", f"--json={out}"], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  prof = json.loads(out.read_text())
  kinds = {k["kind"]: k for k in prof["kinds"]}
  if any(k.startswith("custom-call:RegnetConv") for k in kinds):  # the oneDNN extension is there
    assert kinds["custom-call:RegnetConvFwd"]["ops"] == 33  # regnetx32 has 33 convs, each its own call
    assert kinds["custom-call:RegnetConvBwdWeights"]["ops"] == 33
  assert "?" not in kinds or kinds["?"]["ms_per_step"] < 0.05 * prof["step_ms"]
  assert 0 < prof["in_ops_ms"] and prof["step_ms"] > 0
  assert all(o["shape"] for o in prof["ops"] if not o["kind"].startswith("?"))
  assert "ms/step traced" in r.stdout


def test_profile_step_parses_hlo_kinds():
  spec = importlib.util.spec_from_file_location("profile_step", os.path.join(ROOT, "benchmarks", "profile_step.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  hlo = """
%fused_computation.1 (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  ROOT %add.3 = f32[8]{0} add(f32[8]{0} %p0, f32[8]{0} %p0)
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %ffi_call.7 = bf16[2,4,4,8]{3,2,1,0} custom-call(f32[8]{0} %x), custom_call_target="regnet_jax_onednn_RegnetConvFwd"
  %add_bitcast_fusion.4 = f32[8]{0} fusion(f32[8]{0} %x), kind=kLoop, calls=%fused_computation.1
  ROOT %ynn = f32[8]{0} fusion(f32[8]{0} %x), kind=kCustom, calls=%fused_computation.1
}
"""
  kinds = mod.op_kinds(hlo)
  assert kinds["ffi_call.7"] == ("custom-call:regnet_jax_onednn_RegnetConvFwd", "bf16[2,4,4,8]")
  assert kinds["add_bitcast_fusion.4"] == ("fusion:kLoop:add_bitcast", "f32[8]")
  assert kinds["ynn"] == ("fusion:kCustom:add", "f32[8]")  # not named after its ops: the root's opcode
  assert mod._simplify(kinds["ffi_call.7"][0]) == "custom-call:RegnetConvFwd"


@pytest.mark.slow  # CI runs it (.ci/run: -m slow); the default suite stays near 10 minutes
def test_compare_torch_holds_pytorch_to_its_faster_environment():
  """--torch-env=best (the default): each round times PyTorch without our allocator settings and with them, and
  the faster is the reference; the JSON keeps both."""
  pytest.importorskip("torch")
  out = subprocess.run([sys.executable, "-m", "regnet_jax.bench", "--model=regnetx32", "--batch-size=2",
                        "--image-size=32", "--channels=1", "--num-classes=10", "--steps=1", "--warmup=1",
                        "--compare-torch", "--rounds=2", "--json"], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  t = json.loads(out.stdout.strip().splitlines()[-1])["torch"]
  by_env = t["round_img_per_s_by_env"]
  assert set(by_env) == {"stock", "same"} and all(len(v) == 2 for v in by_env.values())
  assert t["round_img_per_s"] == [max(s, o) for s, o in zip(by_env["stock"], by_env["same"])]
  assert [("stock" if s >= o else "same") for s, o in zip(by_env["stock"], by_env["same"])] == t["round_env"]


def test_bench_tables_renders_one_run(tmp_path):
  """benchmarks/bench_tables.py: the README tables from run_bench.sh's JSON lines (peak first)."""
  spec = importlib.util.spec_from_file_location("bench_tables", os.path.join(ROOT, "benchmarks", "bench_tables.py"))
  tab = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tab)
  base = dict(model="regnetx32", batch_size=128, image_size=96, channels=1, mode="train", conv_impl="auto",
              bn_impl="auto", scan_blocks=False, gflop_s=50.0, peak_rss_mb=1000.0, minor_faults_per_step=20.0,
              compile_s=2.0, ld_preload="/c/libregnet_block_cache.so", glibc_tunables="glibc.malloc.hugetlb=1")
  torch = dict(img_per_s=100.0, peak_rss_mb=1500.0)
  lines = [{"peak_f32_gflop_s": 200.0, "peak_bf16_gflop_s": 400.0, "copy_gb_s": 25.0},
           dict(base, half_precision=False, img_per_s=150.0, torch=torch, round_ratios=[1.4, 1.6],
                ratio_to_torch=1.5),
           dict(base, half_precision=True, img_per_s=260.0, gflop_s=100.0, torch=dict(torch, img_per_s=200.0),
                round_ratios=[1.3, 1.3], ratio_to_torch=1.3),
           dict(base, half_precision=False, img_per_s=140.0, ld_preload="", torch=torch, round_ratios=[1.4],
                ratio_to_torch=1.4),
           dict(base, half_precision=False, conv_impl="split", bn_impl="xla", img_per_s=60.0),
           dict(base, batch_size=2, image_size=224, model="regnety_200mf", half_precision=False, img_per_s=1.0,
                compile_s=4.2)]
  text = tab.tables(lines)
  assert "| 150.0 (25%) | 100.0 | **1.50x** (1.40, 1.60) | 260.0 (25%) | 200.0 | **1.30x** (1.30, 1.30) |" in text
  assert "`auto` + `REGNET_JAX_MALLOC=system` | 140.0 (25%)" in text
  assert "`split` + bn `xla` | 60.0 (25%)" in text
  assert "regnety_200mf 4.2" in text and "f32 200 GFLOP/s" in text
  assert tab.allocator(dict(glibc_tunables="glibc.malloc.mmap_max=0")) == "retain"


def _load_script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_profile_torch_buckets_both_sides_alike():
  pt = _load_script("profile_torch")
  assert pt.torch_bucket("aten::mkldnn_convolution") == "conv/matmul"
  assert pt.torch_bucket("autograd::engine::evaluate_function: ConvolutionBackward0") == "conv/matmul"
  assert pt.torch_bucket("aten::native_batch_norm_backward") == "bn+relu"
  assert pt.torch_bucket("aten::threshold_backward") == "bn+relu"
  assert pt.torch_bucket("aten::addmm") == "conv/matmul" and pt.torch_bucket("aten::add_") == "other"
  assert pt.ours_bucket("custom-call:RegnetConvBwdWeights") == "conv/matmul"
  assert pt.ours_bucket("custom-call:RegnetConvInferResidual") == "conv/matmul"
  assert pt.ours_bucket("custom-call:RegnetBnBwdResidual") == "bn+relu"
  assert pt.ours_bucket("fusion:kOutput:convolution") == "conv/matmul" and pt.ours_bucket("dot") == "conv/matmul"
  assert pt.ours_bucket("fusion:kCustom:ynn") == "conv/matmul"
  assert pt.ours_bucket("fusion:kLoop:add_bitcast") == "other" and pt.ours_bucket("fusion:kLoop:convert") == "other"
  ours = {"step_ms": 50.0, "kinds": [{"kind": "custom-call:RegnetConvFwd", "ms_per_step": 20.0},
                                     {"kind": "custom-call:RegnetConvBwdData", "ms_per_step": 5.0},
                                     {"kind": "custom-call:RegnetBnFwd", "ms_per_step": 15.0},
                                     {"kind": "fusion:kLoop:add", "ms_per_step": 10.0}]}
  theirs = {"step_ms": 100.0, "buckets": dict.fromkeys(pt.BUCKETS, 25.0)}
  s = pt.side_by_side(theirs, ours)
  assert s["ours"] == {"conv/matmul": 25.0, "bn+relu": 15.0, "other": 10.0}
  assert s["ratio_now"] == 2.0 and s["ratio_ceiling_convs_only"] == 4.0


def test_profile_torch_stock_env_drops_only_our_allocator_settings():
  from regnet_jax import runtime
  pt = _load_script("profile_torch")
  ours = {"LD_PRELOAD": f"/x/libother.so /cache/{runtime.BLOCK_CACHE_NAME}",
          "GLIBC_TUNABLES": f"{runtime.HUGETLB_TUNABLE}:glibc.pthread.rseq=0", "HOME": "/root"}
  assert pt.stock_reexec_env(ours) == {"LD_PRELOAD": "/x/libother.so", "GLIBC_TUNABLES": "glibc.pthread.rseq=0",
                                       "HOME": "/root"}
  assert pt.stock_reexec_env({"HOME": "/root"}) is None  # already stock: no re-exec, so no loop


def test_profile_torch_profiles_the_reference_step(tmp_path):
  pytest.importorskip("torch")
  pt = _load_script("profile_torch")
  ours = tmp_path / "ours.json"
  ours.write_text(json.dumps({"model": "regnetx32", "batch_size": 4, "image_size": 32, "half_precision": False,
                              "mode": "train", "step_ms": 10.0,
                              "kinds": [{"kind": "custom-call:RegnetConvFwd", "ms_per_step": 4.0}]}))
  out_json = tmp_path / "torch.json"
  args = ["--model=regnetx32", "--batch-size=4", "--image-size=32", "--channels=1", "--num-classes=10",
          "--steps=1", "--warmup=1"]
  assert pt.main(args + [f"--ours={ours}", f"--json={out_json}"]) == 0
  out = json.loads(out_json.read_text())
  # The step's work lands in aten ops: convolutions forward and backward, batch norm, and the buckets add up.
  assert out["buckets"]["conv/matmul"] > 0 and out["buckets"]["bn+relu"] > 0
  assert abs(sum(out["buckets"].values()) - out["in_ops_ms"]) < 1e-6 * out["in_ops_ms"]
  assert out["in_ops_ms"] <= 1.05 * out["step_ms"]  # self times do not double-count nested ops
  names = {o["op"] for o in out["ops"]}
  assert "aten::native_batch_norm" in names and "aten::convolution_backward" in names
  assert out["side_by_side"]["ratio_ceiling_convs_only"] == pytest.approx(out["step_ms"] / 4.0)
  with pytest.raises(SystemExit, match="profiles another configuration"):
    pt.main(args[:1] + ["--batch-size=8"] + args[2:] + [f"--ours={ours}"])


def test_bn_microbench_times_both_kernels_in_both_dtypes():
  from regnet_jax import onednn
  if not onednn.available():
    pytest.skip(f"no native batch norm here: {onednn.unavailable_reason()}")
  r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bn_microbench.py"), "--rows=512",
                      "--channels=32", "--hw=64", "--repeats=3", "--json"], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
  assert [x["dtype"] for x in rows] == ["float32", "bfloat16"]
  assert all(x["fwd_ms"] > 0 and x["bwd_ms"] > 0 and x["rows"] == 512 for x in rows)
