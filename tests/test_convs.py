"""Every conv formulation equals the XLA grouped-conv reference: outputs and both gradients, f32 and bf16."""
import functools
import importlib.metadata
import platform
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from regnet_jax import convs, onednn

# (n, h, w, cin, cout, k, stride, groups): k 1/3/7, stride 1/2, groups 1 / 2 / 5 / depthwise (with and without
# channel multiplier), odd, even and non-square spatial sizes. Kept small: compile time dominates this file.
SHAPES = [
    (2, 8, 8, 6, 4, 3, 1, 1),
    (2, 9, 7, 3, 8, 3, 2, 1),      # stem-like: few input channels, stride 2, odd non-square
    (2, 10, 10, 4, 8, 3, 2, 1),    # strided dense, even size (custom_vjp: polyphase dx)
    (2, 9, 9, 8, 8, 3, 1, 2),
    (2, 8, 8, 8, 8, 3, 2, 2),      # strided 2-group (custom_vjp: polyphase dx, blockdiag dw)
    (2, 7, 9, 8, 6, 3, 2, 2),
    (1, 6, 6, 10, 10, 3, 1, 5),
    (2, 7, 7, 10, 15, 3, 2, 5),
    (2, 8, 8, 6, 6, 3, 1, 6),      # depthwise
    (2, 9, 9, 4, 8, 3, 2, 4),      # depthwise, channel multiplier 2
    (2, 9, 9, 8, 12, 1, 2, 1),     # strided 1x1 (projection shortcut)
    (2, 8, 8, 10, 10, 1, 2, 5),    # grouped 1x1
]
SHAPE_7X7 = (1, 9, 8, 3, 4, 7, 2, 1)  # 7x7 stem (torchvision-style); its own test, unrolled 49 taps compile slowly
SHAPE_IDS = ["n{}h{}w{}c{}o{}k{}s{}g{}".format(*s) for s in SHAPES]
# (forward, dx, dkernel) plans that exercise every private building block in every role.
PLANS = [("polyphase", "blockdiag", "polyphase"), ("blockdiag", "polyphase", "blockdiag"),
         ("shift", "im2col", "split"), ("im2col", "shift", "xla")]


def _reference(x, w, stride, groups):
  p = (w.shape[0] - 1) // 2
  return lax.conv_general_dilated(x, w, (stride, stride), ((p, p), (p, p)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
                                  precision=lax.Precision.HIGHEST)


def _inputs(shape, seed=0):
  """x, kernel, cotangent ~ N(0, 1), f32 (numpy: no per-shape compile of jax.random)."""
  n, h, w, cin, cout, k, stride, groups = shape
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, h, w, cin), np.float32)
  kernel = rng.standard_normal((k, k, cin // groups, cout), np.float32)
  ct = rng.standard_normal((n, (h - 1) // stride + 1, (w - 1) // stride + 1, cout), np.float32)
  return jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(ct)


def _value_and_grads(fn, x, kernel, ct):
  y, vjp = jax.vjp(fn, x, kernel)
  return (y,) + vjp(ct.astype(y.dtype))


# Compile time dominates this file: optimisation level 0 roughly halves it and changes no value we check.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _all_value_and_grads(fns, x, kernel, ct):
  """{name: (y, dx, dkernel)} as numpy for several conv fns, in ONE jit (one compile per shape keeps the file
  fast)."""
  fn = jax.jit(lambda a, b, c: {name: _value_and_grads(f, a, b, c) for name, f in fns.items()})
  return jax.tree.map(np.asarray, fn.lower(x, kernel, ct).compile(compiler_options=_FAST_COMPILE)(x, kernel, ct))


def _with_reference(fns, stride, groups):
  return dict(fns, reference=functools.partial(_reference, stride=stride, groups=groups))


def _errors(got, want, rtol):
  """Messages for arrays whose max |got - want| exceeds rtol * max |want| (y, dx, dkernel)."""
  out = []
  for g, e, what in zip(got, want, ("y", "dx", "dkernel")):
    chex.assert_shape(g, e.shape)
    err = float(np.max(np.abs(np.asarray(g, np.float32) - e)))
    scale = float(np.max(np.abs(e)))
    if not err <= rtol * scale:
      out.append(f"{what}: max abs err {err:.3g} > {rtol} * {scale:.3g}")
  return out


def _check(results, rtol, want=None):
  """Every entry of results (but "reference") equals want, by default results["reference"]."""
  want = results.pop("reference") if want is None else want
  assert results
  bad = {name: errs for name, got in results.items() if (errs := _errors(got, want, rtol))}
  assert not bad, bad


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_every_impl_matches_reference_f32(shape):
  x, kernel, ct = _inputs(shape)
  stride, groups = shape[6], shape[7]
  fns = {i: functools.partial(convs.conv2d, stride=stride, groups=groups, impl=i) for i in convs.CONV_IMPLS}
  results = _all_value_and_grads(_with_reference(fns, stride, groups), x, kernel, ct)
  for name, (y, dx, dw) in results.items():
    assert (y.dtype, dx.dtype, dw.dtype) == (np.float32,) * 3, name
  _check(results, 1e-5)


@pytest.mark.parametrize("shape", [SHAPES[i] for i in (2, 4, 7)], ids=[SHAPE_IDS[i] for i in (2, 4, 7)])
def test_custom_vjp_plans_and_private_formulations(shape):
  """custom_vjp with any (forward, dx, dkernel) plan gives the reference values; this also checks the private
  building blocks (polyphase, blockdiag) in every role. Strided shapes: where polyphase differs from split."""
  x, kernel, ct = _inputs(shape, seed=1)
  stride, groups = shape[6], shape[7]
  fns = {"/".join(p): functools.partial(convs._planned, stride=stride, groups=groups, plan=p) for p in PLANS}
  _check(_all_value_and_grads(_with_reference(fns, stride, groups), x, kernel, ct), 1e-5)


def test_7x7_stem_matches_reference():
  x, kernel, ct = _inputs(SHAPE_7X7)
  fns = {i: functools.partial(convs.conv2d, stride=2, impl=i) for i in ("im2col", "custom_vjp", "auto")}
  fns["polyphase"] = functools.partial(convs._FORMULATIONS["polyphase"], stride=2, groups=1)
  _check(_all_value_and_grads(_with_reference(fns, 2, 1), x, kernel, ct), 1e-5)


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[7]], ids=[SHAPE_IDS[1], SHAPE_IDS[7]])
def test_every_impl_bf16_runs_and_is_close(shape):
  x, kernel, ct = _inputs(shape)
  stride, groups = shape[6], shape[7]
  xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  impls = [i for i in convs.CONV_IMPLS if not i.startswith("onednn") or onednn.supports(jnp.bfloat16)]
  if len(impls) < len(convs.CONV_IMPLS):  # a CPU without bf16 convolutions in oneDNN: a clear error, at trace time
    with pytest.raises(onednn.OneDnnUnavailable, match="no bfloat16 convolutions on this CPU"):
      jax.eval_shape(functools.partial(convs.conv2d, stride=stride, groups=groups, impl="onednn"), xb, kb)
  fns = {i: functools.partial(convs.conv2d, stride=stride, groups=groups, impl=i) for i in impls}
  # Reference in f32 on the bf16-rounded inputs: what is left is bf16 rounding and accumulation.
  ref = functools.partial(_reference, stride=stride, groups=groups)
  fns["reference"] = lambda a, b: ref(a.astype(jnp.float32), b.astype(jnp.float32))
  results = _all_value_and_grads(fns, xb, kb, ct)
  want = results.pop("reference")
  want = (want[0], want[1].astype(np.float32), want[2].astype(np.float32))
  for name, arrays in results.items():
    assert all(a.dtype == jnp.bfloat16 for a in arrays), name
  _check(results, 2e-2, want)


def test_output_shape_and_padding_is_symmetric_not_same():
  # 3x3 stride 2 on an even input: pycls pads (1, 1); "SAME" would pad (0, 1) and shift the grid.
  x, kernel, _ = _inputs((1, 8, 8, 2, 3, 3, 2, 1))
  for impl in convs.CONV_IMPLS:
    y = convs.conv2d(x, kernel, stride=2, impl=impl)
    chex.assert_shape(y, (1, 4, 4, 3))
    # Output (0, 0) reads input rows/cols -1..1 (row -1 is padding), i.e. kernel taps 1..2 over x[0:2, 0:2].
    want = jnp.einsum("hwc,hwco->o", x[0, :2, :2], kernel[1:, 1:])
    np.testing.assert_allclose(y[0, 0, 0], want, rtol=1e-5, atol=1e-5)


def test_grad_under_jit_of_a_loss():
  x, kernel, _ = _inputs((2, 8, 8, 8, 8, 3, 2, 2))
  def loss(k, impl):
    return jnp.sum(jnp.tanh(convs.conv2d(x, k, stride=2, groups=2, impl=impl)) ** 2)
  want = jax.jit(jax.grad(loss), static_argnums=1)(kernel, "xla")
  for impl in ("custom_vjp", "auto"):
    got = jax.jit(jax.grad(loss), static_argnums=1)(kernel, impl)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_auto_resolves_to_a_concrete_impl():
  shapes = [dict(k=k, stride=s, groups=g, cin=c, cout=c, spatial=sp)
            for k in (1, 3, 7) for s in (1, 2) for (g, c) in ((1, 3), (1, 32), (2, 32), (5, 80), (24, 384),
                                                              (64, 64)) for sp in (7, 56)]
  for backend in ("cpu", "gpu", "tpu", None):
    for kw in shapes:
      assert convs.resolve_impl("auto", backend=backend, **kw) in convs.CONV_IMPLS
  for impl in convs.CONV_IMPLS:
    assert convs.resolve_impl(impl, **shapes[0]) == impl


def test_auto_on_cpu_avoids_the_grouped_xla_kernel(monkeypatch):
  monkeypatch.setattr(onednn, "available", lambda: False)  # the pure-XLA plans auto falls back to
  pick = functools.partial(convs.resolve_impl, "auto", backend="cpu")
  assert pick(k=3, stride=1, groups=2, cin=32, cout=32, spatial=24) != "xla"
  assert pick(k=3, stride=2, groups=5, cin=80, cout=80, spatial=24) != "xla"
  assert pick(k=3, stride=1, groups=64, cin=64, cout=64, spatial=56) != "xla"
  assert pick(k=1, stride=2, groups=1, cin=32, cout=80, spatial=24) == "im2col"


def test_unknown_impl_raises_naming_the_valid_ones():
  x, kernel, _ = _inputs(SHAPES[0])
  with pytest.raises(ValueError, match="unknown conv impl 'cudnn'") as e:
    convs.conv2d(x, kernel, impl="cudnn")
  for name in convs.CONV_IMPLS + ("auto",):
    assert name in str(e.value)
  with pytest.raises(ValueError, match="known: "):
    convs.resolve_impl("nope", k=3, stride=1, groups=1, cin=4, cout=4, spatial=8)


def test_bad_groups_and_kernel_raise():
  x, kernel, _ = _inputs(SHAPES[3])  # cin 8, groups 2 -> kernel in-channels 4
  with pytest.raises(ValueError, match="groups=3"):
    convs.conv2d(x, kernel, groups=3)
  with pytest.raises(ValueError, match="groups=1"):
    convs.conv2d(x, kernel, groups=1)
  with pytest.raises(ValueError, match="odd"):
    convs.conv2d(x, jnp.zeros((2, 2, 4, 8)), groups=2)


def test_custom_plan_names_known_formulations():
  for k in (1, 3):
    for s in (1, 2):
      for g, c in ((1, 3), (1, 32), (2, 32), (5, 80), (64, 64)):
        plan = convs.custom_plan(k=k, stride=s, groups=g, cin=c, cout=c, spatial=24)
        assert len(plan) == 3 and all(p in convs._FORMULATIONS for p in plan), plan


# ---------------------------------------------------------------------------------------------------------------
# oneDNN extension (conv_impl="onednn"): the impl itself is covered by the every-impl tests above.

ON_X86_LINUX = sys.platform == "linux" and platform.machine() == "x86_64"


@pytest.mark.skipif(not ON_X86_LINUX, reason="the oneDNN extension is built for x86-64 Linux only")
def test_onednn_extension_builds_and_loads_here():
  # Not skipped when unavailable: on x86-64 Linux (CI included) a broken build must fail loudly, not fall back.
  assert onednn.available(), onednn.unavailable_reason()
  assert onednn.version().startswith("3.")


@pytest.mark.skipif(not ON_X86_LINUX, reason="the oneDNN extension is built for x86-64 Linux only")
def test_onednn_regnet_layers_match_reference():
  """RegNet-sized layers (more channels and pixels than SHAPES: oneDNN picks blocked kernels there)."""
  for shape in [(4, 24, 24, 32, 32, 3, 2, 2), (4, 12, 12, 80, 80, 3, 1, 5), (2, 14, 14, 64, 64, 3, 2, 1),
                (2, 7, 7, 96, 96, 3, 1, 4)]:
    x, kernel, ct = _inputs(shape)
    stride, groups = shape[6], shape[7]
    fns = {"onednn": functools.partial(convs.conv2d, stride=stride, groups=groups, impl="onednn")}
    _check(_all_value_and_grads(_with_reference(fns, stride, groups), x, kernel, ct), 1e-5)


@pytest.mark.skipif(not ON_X86_LINUX, reason="the oneDNN extension is built for x86-64 Linux only")
def test_auto_on_a_single_cpu_uses_onednn_where_it_has_the_dtype():
  pick = functools.partial(convs.resolve_impl, "auto", backend="cpu")
  for kw in (dict(k=3, stride=2, groups=2, cin=32, cout=32, spatial=48), dict(k=1, stride=1, groups=1, cin=32,
             cout=32, spatial=48), dict(k=3, stride=2, groups=1, cin=3, cout=32, spatial=224)):
    # where this CPU's oneDNN has optimised kernels for the dtype (f32: AVX2; bf16: AVX-512 or AVX2-VNNI-2)
    assert (pick(**kw) == "onednn") == onednn.fast(jnp.float32)
    assert (pick(**kw, dtype=jnp.bfloat16) == "onednn") == onednn.fast(jnp.bfloat16)
  # Other dtypes keep the pure-XLA plans.
  assert pick(k=3, stride=1, groups=2, cin=32, cout=32, spatial=24, dtype=jnp.float16) == "split"
  assert pick(k=1, stride=1, groups=1, cin=32, cout=32, spatial=24, dtype=jnp.float16) == "im2col"


@pytest.mark.skipif(not ON_X86_LINUX, reason="the oneDNN extension is built for x86-64 Linux only")
def test_a_cpu_without_bf16_convs_keeps_bf16_off_onednn(monkeypatch):
  """As on a CPU without AVX-512: auto picks XLA plans for bf16 and conv_impl="onednn" says why, before tracing
  (a failed oneDNN call inside an XLA program is not recoverable: CI once crashed after one)."""
  if not onednn.fast(jnp.float32):
    pytest.skip("this CPU's oneDNN has no optimised f32 kernels either (no AVX2): auto never picks it here")
  real = onednn.probe
  monkeypatch.setattr(onednn, "probe", lambda dtype, blocked=False: (
      onednn.NO_KERNELS if jnp.dtype(dtype) == jnp.bfloat16 else real(dtype, blocked)))
  kw = dict(k=3, stride=2, groups=2, cin=32, cout=32, spatial=48, backend="cpu")
  assert convs.resolve_impl("auto", **kw) == "onednn"
  assert convs.resolve_impl("auto", **kw, dtype=jnp.bfloat16) == "custom_vjp"
  x, kernel, _ = _inputs((2, 8, 8, 8, 8, 3, 2, 2))
  xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  with pytest.raises(onednn.OneDnnUnavailable, match=r'no bfloat16 convolutions on this CPU.*use conv_impl="auto"'):
    jax.eval_shape(lambda a, b: convs.conv2d(a, b, stride=2, groups=2, impl="onednn"), xb, kb)
  y = jax.jit(lambda a, b: convs.conv2d(a, b, stride=2, groups=2, impl="auto"))(xb, kb)
  np.testing.assert_allclose(np.asarray(y, np.float32), _reference(x, kernel, 2, 2), rtol=5e-2, atol=0.15)


@pytest.mark.skipif(not ON_X86_LINUX, reason="the oneDNN extension is built for x86-64 Linux only")
def test_auto_gives_a_layer_with_only_reference_kernels_to_xla(monkeypatch):
  """oneDNN's reference loops run 100-300x slower (an AVX2 AMD EPYC: groups of 4 channels, a sweep trial at
  3.8 img/s): auto asks oneDNN per layer, in every direction, and keeps XLA's plan where only those exist."""
  if not onednn.fast(jnp.float32):
    pytest.skip("this CPU's oneDNN has no optimised f32 kernels at all: auto never picks it here")
  pick = functools.partial(convs.resolve_impl, "auto", backend="cpu", batch=8)
  layers = [dict(k=3, stride=s, groups=c // gw, cin=c, cout=c, spatial=h)
            for s in (1, 2) for gw in (1, 2, 4, 8, 16, 24) for c, h in ((48, 16), (96, 8)) if c % gw == 0]
  layers += [dict(k=1, stride=1, groups=1, cin=16, cout=72, spatial=16), dict(k=3, stride=1, groups=1, cin=1,
             cout=16, spatial=32)]
  for kw in layers:
    h = kw["spatial"]
    fast = onednn.layer_fast(jnp.float32, k=kw["k"], stride=kw["stride"], groups=kw["groups"], cin=kw["cin"],
                             cout=kw["cout"], h=h, w=h, batch=8)
    assert (pick(**kw) == "onednn") == fast, kw
  # Dense 1x1 convs, the probe's own shapes, have optimised kernels wherever fast() says so.
  assert onednn.layer_fast(jnp.float32, k=1, stride=1, groups=1, cin=32, cout=64, h=16, w=16)
  # The fallback is the XLA plan the layer would have without oneDNN.
  monkeypatch.setattr(onednn, "layer_fast", lambda *a, **k: False)
  assert pick(k=3, stride=1, groups=12, cin=48, cout=48, spatial=16) == "split"
  assert pick(k=1, stride=1, groups=1, cin=16, cout=72, spatial=16) == "im2col"


def test_auto_keeps_xla_plans_under_a_multi_device_mesh(monkeypatch):
  # The FFI call is not partitioned: on 8 devices XLA would gather the batch onto each one.
  monkeypatch.setattr(jax, "device_count", lambda *a: 8)
  assert convs.resolve_impl("auto", k=3, stride=1, groups=2, cin=32, cout=32, spatial=24, backend="cpu") == "split"


def test_onednn_rejects_other_dtypes_and_backends():
  x, kernel, _ = _inputs(SHAPES[3])
  if onednn.available():
    with pytest.raises(ValueError, match="float32 or bfloat16"):
      onednn.conv2d(x.astype(jnp.float16), kernel.astype(jnp.float16), 1, 2)
  with pytest.raises(ValueError, match="CPU only.*'gpu'"):
    convs.resolve_impl("onednn", k=3, stride=1, groups=2, cin=8, cout=8, spatial=9, backend="gpu")


def test_onednn_missing_package_says_how_to_install(monkeypatch):
  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(importlib.metadata, "files", missing)
  with pytest.raises(onednn.OneDnnUnavailable, match="pip install onednn-cpu-gomp"):
    onednn.onednn_paths()


@pytest.mark.skipif(not ON_X86_LINUX, reason="the oneDNN extension is built for x86-64 Linux only")
def test_onednn_model_train_step_matches_xla():
  """A whole RegNetX (stem, strided and grouped blocks, BN in training mode): loss and every gradient."""
  from regnet_jax import anynet, zoo
  spec = zoo.get_spec("regnetx32")
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 1))
  # The reference keeps XLA's batch norm too (bn_impl="auto" would pick the native one on this CPU).
  nets = {i: anynet.build_model(spec, num_classes=10, conv_impl=i, bn_impl="xla" if i == "xla" else "auto")
          for i in ("xla", "onednn", "auto")}
  variables = nets["xla"].init(jax.random.key(1), x, train=False)

  def loss(params, net):
    logits, _ = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  want = jax.value_and_grad(loss)(variables["params"], nets["xla"])
  for impl in ("onednn", "auto"):
    got = jax.value_and_grad(loss)(variables["params"], nets[impl])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(w))) + 1e-7)
