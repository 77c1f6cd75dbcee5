"""bn_impl="native" (fused BN + residual + ReLU on the CPU) equals the JAX batch norm: outputs, running statistics
and every gradient, f32 exactly to rounding, bf16 at least as close to an f32 reference as bf16 allows."""
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax import anynet, batchnorm_cpu, config as config_lib, layers, onednn, zoo

pytestmark = pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                                reason="the native kernels live in the oneDNN extension (x86-64 Linux only)")

C = 24


def _bn_outputs(impl, dtype, x, residual, relu, groups):
  """y, new batch_stats and the gradients (scale, bias, x[, residual]) of a fixed random projection of y."""
  m = layers.BatchNorm(use_running_average=False, num_groups=groups, impl=impl, dtype=dtype)
  stats = m.init(jax.random.key(0), x.astype(dtype), None if residual is None else residual.astype(dtype),
                 relu)["batch_stats"]
  params = {"scale": jnp.linspace(0.5, 1.5, C), "bias": jnp.linspace(-1.0, 1.0, C)}
  weights = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)

  def f(params, x, residual):
    r = None if residual is None else residual.astype(dtype)
    y, new = m.apply({"params": params, "batch_stats": stats}, x.astype(dtype), r, relu, mutable=["batch_stats"])
    return jnp.sum(y.astype(jnp.float32) * weights), (y, new)

  argnums = (0, 1) if residual is None else (0, 1, 2)
  (_, (y, new)), grads = jax.value_and_grad(f, argnums=argnums, has_aux=True)(params, x, residual)
  return [np.asarray(jnp.asarray(a, jnp.float32)) for a in jax.tree.leaves((y, new, grads))]


def _inputs(seed, shape=(8, 5, 6, C), residual=False):
  rng = np.random.default_rng(seed)
  # Mean 3, std 2: the normalisation is not the identity, and about a third of the outputs are clamped by ReLU.
  x = jnp.asarray(rng.normal(3.0, 2.0, shape), jnp.float32)
  r = jnp.asarray(rng.normal(0.0, 1.0, shape), jnp.float32) if residual else None
  return x, r


def _rel_err(a, b):
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_native_equals_xla_f32(groups, residual, relu):
  x, r = _inputs(groups, residual=residual)
  got = _bn_outputs("native", jnp.float32, x, r, relu, groups)
  want = _bn_outputs("xla", jnp.float32, x, r, relu, groups)
  assert len(got) == len(want) == (7 if residual else 6)
  for g, w in zip(got, want):
    assert _rel_err(g, w) < 1e-5


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_native_bf16_is_within_bf16_rounding_of_f32(residual, relu):
  """Inputs exactly representable in bf16; compared with the f32 computation on the same values. The native
  kernels compute in f32 and round once, so they stay within bf16 precision (XLA's bf16 path does not: it
  normalises in bf16 arithmetic, and near-zero outputs flip the ReLU mask)."""
  x, r = _inputs(7, residual=residual)
  x = x.astype(jnp.bfloat16).astype(jnp.float32)
  r = None if r is None else r.astype(jnp.bfloat16).astype(jnp.float32)
  got = _bn_outputs("native", jnp.bfloat16, x, r, relu, 1)
  want = _bn_outputs("xla", jnp.float32, x, r, relu, 1)
  for i, (g, w) in enumerate(zip(got, want)):
    # Leaf 3 is d bias = sum of the bf16 output cotangents: their rounding alone moves it by up to ~2%.
    assert _rel_err(g, w) < (3e-2 if i == 3 else 1e-2), i


def test_statistics_exact_when_the_mean_dwarfs_the_spread():
  x = jnp.asarray(1000.0 + np.random.default_rng(0).normal(0.0, 1e-2, (4, 6, 6, C)), jnp.float32)
  s, b = jnp.ones((C,)), jnp.zeros((C,))
  y, mean, var = batchnorm_cpu.batch_norm_act(x[None], s, b, epsilon=1e-5, relu=False)
  x64 = np.asarray(x, np.float64).reshape(-1, C)
  np.testing.assert_allclose(np.asarray(mean[0]), x64.mean(0), rtol=1e-7)
  np.testing.assert_allclose(np.asarray(var[0]), x64.var(0), rtol=1e-3)
  # y to the float32 rounding of the mean (half an ulp of 1000 is 3e-5, i.e. 3e-3 standard deviations).
  want_y = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, C), want_y, atol=5e-3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_nan_input_stays_visible(dtype):
  """A NaN activation (diverged training) must reach the statistics, outputs and gradients, not be clamped away
  (bfloat16: the kernels' branch-free rounding store keeps NaN a NaN)."""
  x = jnp.ones((1, 4, 3, 3, C), dtype).at[0, 1, 1, 1, 5].set(jnp.nan)
  y, mean, var = batchnorm_cpu.batch_norm_act(x, jnp.ones((C,)), jnp.zeros((C,)), epsilon=1e-5, relu=True)
  assert np.isnan(mean[0, 5]) and np.isnan(var[0, 5]) and np.isnan(np.asarray(y, np.float32)[..., 5]).all()
  assert np.isfinite(np.asarray(var)[0, :5]).all()
  assert np.isfinite(np.asarray(y, np.float32)[..., :5]).all()

  def loss(x):
    y, _, _ = batchnorm_cpu.batch_norm_act(x, jnp.ones((C,)), jnp.full((C,), 0.5), epsilon=1e-5, relu=False)
    return jnp.sum(y.astype(jnp.float32) * jnp.arange(C))

  dx = np.asarray(jax.grad(loss)(x), np.float32)
  assert np.isnan(dx[..., 5]).all() and np.isfinite(dx[..., :5]).all()


def test_gradient_through_the_returned_statistics():
  """Not used by training (the statistics only feed running averages), but a caller may differentiate them."""
  x, _ = _inputs(3)
  xg, s, b = x[None], jnp.linspace(0.5, 1.5, C), jnp.linspace(-1.0, 1.0, C)

  def native(x):
    y, mean, var = batchnorm_cpu.batch_norm_act(x, s, b, epsilon=1e-5, relu=True)
    return jnp.sum(y * y) + jnp.sum(jnp.sin(mean)) + jnp.sum(var * 3.0)

  def reference(x):
    y, mean, var = layers._batch_norm_train(x, s, b, 1e-5)
    return jnp.sum(jax.nn.relu(y) ** 2) + jnp.sum(jnp.sin(mean)) + jnp.sum(var * 3.0)

  np.testing.assert_allclose(jax.grad(native)(xg), jax.grad(reference)(xg), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("used", ["both", "first", "second"])
def test_twin_output_sums_both_gradients_in_the_kernel(dtype, residual, blocked, used):
  """twin=True: y returned twice; the gradient of a loss using the two copies differently equals the gradient of
  the same loss on one y used twice (JAX's own sum). With one copy unused, the one-part kernel runs."""
  x, r = _inputs(7, shape=(4, 5, 6, 32), residual=residual)
  s, b = jnp.linspace(0.5, 1.5, 32), jnp.linspace(-1.0, 1.0, 32)
  w1 = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)
  w2 = jnp.sin(jnp.arange(x.size, dtype=jnp.float32) * 0.3).reshape(x.shape)
  c1, c2 = float(used != "second"), float(used != "first")

  def to_layout(a):
    return onednn.to_blocked(a) if blocked else a

  def loss(x, r, twin):
    xs = to_layout(x.astype(dtype))[None]
    rs = None if r is None else to_layout(r.astype(dtype))[None]
    y, _, _ = batchnorm_cpu.batch_norm_act(xs, s, b, rs, epsilon=1e-5, relu=True, x_blocked=blocked,
                                           y_blocked=blocked, twin=twin)
    y1, y2 = y if twin else (y, y)
    y1 = onednn.from_blocked(y1[0]) if blocked else y1[0]
    y2 = onednn.from_blocked(y2[0]) if blocked else y2[0]
    terms = []
    if c1:
      terms.append(jnp.sum(y1.astype(jnp.float32) * w1))
    if c2:
      terms.append(jnp.sum(jnp.square(y2.astype(jnp.float32)) * w2))
    return sum(terms)

  argnums = (0, 1) if residual else (0,)
  got = jax.jit(jax.grad(lambda x, r: loss(x, r, True), argnums=argnums))(x, r)
  want = jax.jit(jax.grad(lambda x, r: loss(x, r, False), argnums=argnums))(x, r)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2  # bf16: the kernel sums in f32, JAX rounds the sum to bf16 first
  for g, w in zip(got, want):
    assert np.abs(np.asarray(w)).max() > 0
    assert _rel_err(np.asarray(g, np.float32), np.asarray(w, np.float32)) < tol
  if used == "both":  # the fused kernel ran, and no separate add: one fewer pass over the activation
    hlo = jax.jit(jax.grad(lambda x, r: loss(x, r, True), argnums=argnums)).lower(x, r).as_text()
    name = "RegnetBnBwdResidual2" if residual else "RegnetBnBwd2"
    assert name in hlo


def test_resolve_impl():
  assert batchnorm_cpu.resolve_impl("auto", jnp.float32) == "native"
  assert batchnorm_cpu.resolve_impl("auto", jnp.bfloat16) == "native"
  assert batchnorm_cpu.resolve_impl("auto", jnp.float16) == "xla"
  assert batchnorm_cpu.resolve_impl("xla", jnp.float32) == "xla"
  with pytest.raises(ValueError, match="bn_impl='fused' is not one of auto, xla, native"):
    batchnorm_cpu.resolve_impl("fused", jnp.float32)
  with pytest.raises(ValueError, match="float32 / bfloat16 on the CPU only"):
    batchnorm_cpu.resolve_impl("native", jnp.float16)
  with pytest.raises(ValueError, match="bn_impl"):
    anynet.build_model(zoo.get_spec("regnetx32"), bn_impl="fast")


def test_auto_keeps_xla_under_several_devices(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 4)
  assert batchnorm_cpu.resolve_impl("auto", jnp.float32) == "xla"


def test_config_rejects_unknown_bn_impl():
  c = config_lib.base_config()
  c.bn_impl = "fused"
  with pytest.raises(ValueError, match="bn_impl"):
    config_lib.validate(c)


@pytest.mark.parametrize("scan_blocks", [False, True])
def test_model_train_step_matches_xla_batch_norm(scan_blocks):
  """A whole RegNetX32 in training mode: loss, every gradient and the new running statistics."""
  spec = zoo.get_spec("regnetx32")
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 1))
  nets = {i: anynet.build_model(spec, num_classes=10, conv_impl="xla", bn_impl=i, scan_blocks=scan_blocks)
          for i in ("xla", "native")}
  variables = nets["xla"].init(jax.random.key(1), x, train=False)

  def loss(params, net):
    logits, new = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), new

  want = jax.value_and_grad(loss, has_aux=True)(variables["params"], nets["xla"])
  got = jax.value_and_grad(loss, has_aux=True)(variables["params"], nets["native"])
  np.testing.assert_allclose(got[0][0], want[0][0], rtol=1e-5)
  for g, w in zip(jax.tree.leaves((got[1], got[0][1])), jax.tree.leaves((want[1], want[0][1]))):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(w))) + 1e-7)
