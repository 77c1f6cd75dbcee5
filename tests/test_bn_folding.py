"""Inference with oneDNN convs folds each batch norm into its conv (layers._Layers.conv_bn_folded,
onednn.conv2d_bn_act): the same function as conv -> BN(running statistics) -> + residual -> ReLU, to float
rounding, from the same parameters."""
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax import anynet, convs, onednn, zoo

pytestmark = pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"
                                     and onednn.available()),
                                reason="the oneDNN extension is built for x86-64 Linux only")

_BF16 = pytest.mark.skipif(not onednn.supports(jnp.bfloat16),
                           reason="this CPU's oneDNN has no bfloat16 convolutions (needs AVX-512 or AVX2-VNNI-2)")


def _reference(x, kernel, mul, shift, residual, stride, groups, relu):
  y = convs.conv2d(x.astype(jnp.float32), kernel, stride=stride, groups=groups, impl="xla") * mul + shift
  if residual is not None:
    y = y + residual.astype(jnp.float32)
  return jnp.maximum(y, 0.0) if relu else y


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=_BF16)])
@pytest.mark.parametrize("k,stride,groups,cin,cout", [(3, 2, 2, 32, 32), (1, 1, 1, 32, 48), (3, 1, 5, 40, 40),
                                                      (3, 2, 1, 1, 16), (1, 2, 1, 16, 32)])
@pytest.mark.parametrize("residual,relu", [(False, True), (True, True), (True, False), (False, False)])
def test_conv_bn_act_equals_conv_then_affine_add_relu(dtype, k, stride, groups, cin, cout, residual, relu):
  r = np.random.default_rng(k * 100 + stride * 10 + groups)
  x = jnp.asarray(r.normal(size=(3, 11, 11, cin)), dtype)
  kernel = jnp.asarray(r.normal(size=(k, k, cin // groups, cout)) * 0.3, jnp.float32)
  mul = jnp.asarray(r.uniform(0.3, 3.0, size=cout), jnp.float32)
  shift = jnp.asarray(r.normal(size=cout), jnp.float32)
  ho = (11 - 1) // stride + 1
  res = jnp.asarray(r.normal(size=(3, ho, ho, cout)), dtype) if residual else None
  got = onednn.conv2d_bn_act(x, (kernel * mul).astype(dtype), shift, res, stride=stride, groups=groups, relu=relu)
  assert got.shape == (3, ho, ho, cout) and got.dtype == dtype
  want = _reference(x, kernel, mul, shift, res, stride, groups, relu)
  scale = float(jnp.max(jnp.abs(want)))
  # f32: the summation order differs; bf16: the folded kernel and y are each rounded once to 8 bits.
  tol = 2e-6 if dtype == jnp.float32 else 1.6e-2
  assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - want))) <= tol * scale
  if relu:
    assert float(jnp.min(got.astype(jnp.float32))) >= 0.0


def test_conv_bn_act_rejects_what_it_cannot_take():
  x = jnp.ones((2, 8, 8, 16))
  kernel = jnp.ones((3, 3, 16, 32))
  with pytest.raises(ValueError, match="bias"):
    onednn.conv2d_bn_act(x, kernel, jnp.ones((16,)), stride=1, groups=1, relu=True)
  with pytest.raises(ValueError, match="residual"):
    onednn.conv2d_bn_act(x, kernel, jnp.ones((32,)), jnp.ones((2, 4, 4, 32)), stride=1, groups=1, relu=True)
  with pytest.raises(ValueError, match="same dtype"):
    onednn.conv2d_bn_act(x, kernel.astype(jnp.bfloat16), jnp.ones((32,)), stride=1, groups=1, relu=True)


def _random_bn_state(variables, seed):
  """Non-trivial running statistics and BN affine parameters, so that folding has something to fold."""
  r = np.random.default_rng(seed)

  def perturb(path, a):
    key = getattr(path[-1], "key", None)
    if key in ("var", "scale"):
      return jnp.asarray(r.uniform(0.5, 1.5, a.shape), a.dtype)
    if key in ("mean", "bias") and any(getattr(p, "key", "").endswith("bn") for p in path):
      return jnp.asarray(r.normal(size=a.shape) * 0.2, a.dtype)
    return a
  return jax.tree_util.tree_map_with_path(perturb, variables)


def _logits(spec, impl, dtype, variables, x):
  net = anynet.build_model(spec, num_classes=10, conv_impl=impl, dtype=dtype)
  fn = jax.jit(lambda v, x: net.apply(v, x, train=False))
  return np.asarray(fn(variables, x), np.float32), fn.lower(variables, x).as_text()


@pytest.mark.parametrize("model,channels,size", [("regnetx32", 1, 32), ("regnety_200mf", 3, 48)])
def test_folded_inference_equals_unfolded(model, channels, size):
  """A whole network's eval logits: onednn (folded; what auto runs on one CPU) vs the plain Flax convs and BN,
  from the same parameters and statistics; in bf16 the folded net is no further from the f32 logits than the
  unfolded bf16 net is, within a factor."""
  spec = zoo.get_spec(model)
  x = jax.random.normal(jax.random.key(1), (4, size, size, channels))
  net = anynet.build_model(spec, num_classes=10, conv_impl="xla")
  variables = _random_bn_state(net.init(jax.random.key(0), x, train=False), 0)
  want, _ = _logits(spec, "xla", jnp.float32, variables, x)
  got, hlo = _logits(spec, "onednn", jnp.float32, variables, x)
  n_bn = sum(1 for path, _ in jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
             if getattr(path[-1], "key", None) == "mean")
  calls = hlo.count("@regnet_jax_onednn_RegnetConvInfer")  # StableHLO custom calls, with or without residual
  assert calls == n_bn, f"{calls} folded convs for {n_bn} batch norms"
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(want))))
  if onednn.supports(jnp.bfloat16):
    folded, _ = _logits(spec, "onednn", jnp.bfloat16, variables, x)
    unfolded, _ = _logits(spec, "xla", jnp.bfloat16, variables, x)
    err_folded, err_unfolded = np.max(np.abs(folded - want)), np.max(np.abs(unfolded - want))
    assert err_folded <= 2.0 * err_unfolded + 1e-3 * np.max(np.abs(want)), (err_folded, err_unfolded)


def test_initialising_an_inference_model_declares_every_parameter():
  """init with train=False takes the unfolded path, so the parameter tree is the one training makes."""
  spec = zoo.get_spec("regnetx32")
  x = jnp.ones((2, 32, 32, 1))
  folded = anynet.build_model(spec, num_classes=10, conv_impl="onednn").init(jax.random.key(0), x, train=False)
  plain = anynet.build_model(spec, num_classes=10, conv_impl="xla").init(jax.random.key(0), x, train=True)
  assert jax.tree.structure(folded) == jax.tree.structure(plain)
