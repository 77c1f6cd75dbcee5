"""The Flax model: shapes, parameter counts, gradients, BN statistics, SE width, scan layout, dtypes."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax import anynet, layers, zoo
from regnet_jax.complexity import complexity
from regnet_jax.specs import AnyNetSpec, StageSpec

TINY = AnyNetSpec.from_lists(depths=(1, 3), widths=(16, 24), group_ws=(8, 8), stem_w=8, se_ratio=0.25)


def _init(model, shape, seed=0):
  return model.init(jax.random.key(seed), jnp.zeros(shape, jnp.float32))


def _images(shape, seed=1):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("name", zoo.model_names())
def test_real_param_count_equals_analytic(name):
  spec = zoo.get_spec(name)
  model = anynet.build_model(spec, conv_impl="xla")
  shapes = jax.eval_shape(lambda: _init(model, (1, 224, 224, 3)))
  real = sum(math.prod(p.shape) for p in jax.tree.leaves(shapes["params"]))
  assert real == complexity(spec).params


def test_d2l_regnetx32_shapes():
  model = anynet.build_model(zoo.get_spec("regnetx32"), num_classes=10, conv_impl="xla")
  x = _images((2, 96, 96, 1))
  variables = _init(model, x.shape)
  logits, state = model.apply(variables, x, mutable=["intermediates"])
  inter = state["intermediates"]
  chex.assert_shape(inter["stem_out"][0], (2, 48, 48, 32))
  chex.assert_shape(inter["s1_out"][0], (2, 24, 24, 32))
  chex.assert_shape(inter["s2_out"][0], (2, 12, 12, 80))
  chex.assert_shape(logits, (2, 10))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  # Grouped 3x3 in stage 1: 32 channels / group width 16 = 2 groups -> kernel (3, 3, 16, 32).
  chex.assert_shape(variables["params"]["s1_b1"]["b"]["kernel"], (3, 3, 16, 32))
  chex.assert_shape(variables["params"]["s2_b3"]["b"]["kernel"], (3, 3, 16, 80))


@pytest.mark.parametrize("spec", [
    TINY,
    TINY.replace(se_ratio=0.0, stem_type="res"),
    TINY.replace(se_ratio=0.0, block_type="basic", stem_type="cifar"),
    TINY.replace(se_ratio=0.0, block_type="vanilla"),
    TINY.replace(head_w=32),
], ids=["bottleneck_se", "res_stem", "basic_cifar", "vanilla", "head_w"])
def test_block_and_stem_kinds(spec):
  model = anynet.build_model(spec, num_classes=7, conv_impl="xla")
  x = _images((2, 32, 32, 3))
  variables = _init(model, x.shape)
  logits = model.apply(variables, x)
  chex.assert_shape(logits, (2, 7))
  chex.assert_tree_all_finite(logits)
  real = sum(p.size for p in jax.tree.leaves(variables["params"]))
  assert real == complexity(spec, image_size=32, num_classes=7).params
  if spec.block_type == "vanilla":
    assert "proj" not in variables["params"]["s1_b1"]


def test_jit_equals_no_jit():
  model = anynet.build_model(TINY, num_classes=5, conv_impl="xla")
  x = _images((4, 32, 32, 3))
  variables = _init(model, x.shape)
  for train in (False, True):
    f = lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(jax.jit(f)(variables, x), f(variables, x), rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_gradient():
  model = anynet.build_model(TINY, num_classes=5, conv_impl="xla")
  x = _images((4, 32, 32, 3))
  labels = jnp.arange(4) % 5
  variables = _init(model, x.shape)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  grads = jax.grad(loss)(variables["params"])
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.max(jnp.abs(g))) > 0, f"zero gradient for {jax.tree_util.keystr(path)}"


def test_bn_statistics_move_only_in_training():
  model = anynet.build_model(TINY, num_classes=5, conv_impl="xla")
  x = _images((4, 32, 32, 3)) * 3 + 1
  variables = _init(model, x.shape)
  _, train_state = model.apply(variables, x, train=True, mutable=["batch_stats"])
  _, eval_state = model.apply(variables, x, train=False, mutable=["batch_stats"])
  before = variables["batch_stats"]
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, train_state["batch_stats"])
  assert all(jax.tree.leaves(moved))
  chex.assert_trees_all_equal(before, eval_state["batch_stats"])
  # PyTorch momentum 0.1: new = 0.9 * old + 0.1 * batch mean of the stem's BN input.
  stem_conv = variables["params"]["stem"]["conv"]["kernel"]
  pre = jax.lax.conv_general_dilated(x, stem_conv, (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(train_state["batch_stats"]["stem"]["bn"]["mean"], 0.1 * pre.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  n = pre.shape[0] * pre.shape[1] * pre.shape[2]
  np.testing.assert_allclose(train_state["batch_stats"]["stem"]["bn"]["var"],
                             0.9 + 0.1 * pre.var(axis=(0, 1, 2)) * n / (n - 1), rtol=1e-4)


def test_eval_mode_uses_running_statistics():
  bn = layers.BatchNorm(use_running_average=True)
  x = _images((2, 3, 3, 4))
  variables = {"params": {"scale": jnp.full((4,), 2.0), "bias": jnp.full((4,), 0.5)},
               "batch_stats": {"mean": jnp.full((4,), 1.0), "var": jnp.full((4,), 4.0)}}
  np.testing.assert_allclose(bn.apply(variables, x), (x - 1.0) / jnp.sqrt(4.0 + 1e-5) * 2.0 + 0.5, rtol=1e-5, atol=1e-6)


def test_bn_groups_normalise_each_group_separately():
  bn2 = layers.BatchNorm(use_running_average=False, num_groups=2)
  bn1 = layers.BatchNorm(use_running_average=False)
  x = jnp.concatenate([_images((2, 4, 4, 3), 1), _images((2, 4, 4, 3), 2) * 5 + 3])
  v = bn1.init(jax.random.key(0), x)
  y2, s2 = bn2.apply(v, x, mutable=["batch_stats"])
  y_a, s_a = bn1.apply(v, x[:2], mutable=["batch_stats"])
  y_b, s_b = bn1.apply(v, x[2:], mutable=["batch_stats"])
  np.testing.assert_allclose(y2, jnp.concatenate([y_a, y_b]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(s2["batch_stats"]["mean"], (s_a["batch_stats"]["mean"] + s_b["batch_stats"]["mean"]) / 2,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="not divisible into bn groups=3"):
    layers.BatchNorm(use_running_average=False, num_groups=3).apply(v, x, mutable=["batch_stats"])


def _bn_autodiff_reference(x, scale, bias, groups, eps=1e-5):
  """Training-mode BN written plainly; jax.grad of it is the reference for BatchNorm's hand-written VJP."""
  xg = x.reshape((groups, x.shape[0] // groups) + x.shape[1:]).astype(jnp.float32)
  mean = xg.mean(axis=(1, 2, 3), keepdims=True)
  var = jnp.square(xg - mean).mean(axis=(1, 2, 3), keepdims=True)
  return ((xg - mean) * jax.lax.rsqrt(var + eps) * scale + bias).reshape(x.shape)


@pytest.mark.parametrize("groups, dtype, rtol", [(1, jnp.float32, 1e-5), (2, jnp.float32, 1e-5),
                                                 (1, jnp.bfloat16, 2e-2)])
def test_bn_hand_written_vjp_matches_autodiff(groups, dtype, rtol):
  x = (_images((4, 5, 3, 6), 3) * 3 + 2).astype(dtype)  # non-zero mean: the centring terms matter
  ct = _images((4, 5, 3, 6), 4)
  scale, bias = 1 + _images((6,), 5) * 0.2, _images((6,), 6)
  bn = layers.BatchNorm(use_running_average=False, num_groups=groups, dtype=dtype)
  v = {"params": {"scale": scale, "bias": bias}, "batch_stats": {"mean": jnp.zeros(6), "var": jnp.ones(6)}}

  def loss_bn(x, p):
    y, _ = bn.apply({**v, "params": p}, x, mutable=["batch_stats"])
    return jnp.sum(y.astype(jnp.float32) * ct)

  def loss_ref(x, p):
    return jnp.sum(_bn_autodiff_reference(x, p["scale"], p["bias"], groups) * ct)

  got = jax.value_and_grad(loss_bn, argnums=(0, 1))(x, v["params"])
  want = jax.value_and_grad(loss_ref, argnums=(0, 1))(x.astype(jnp.float32), v["params"])
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(w))))


def test_se_width_follows_block_input_width():
  # Stage 2 first block: input width 16 -> w_se = round(0.25 * 16) = 4; later blocks: input 24 -> 6.
  model = anynet.build_model(TINY, num_classes=5, conv_impl="xla")
  params = _init(model, (1, 32, 32, 3))["params"]
  chex.assert_shape(params["s1_b1"]["se"]["reduce"]["kernel"], (1, 1, 16, 2))  # input = stem width 8
  chex.assert_shape(params["s2_b1"]["se"]["reduce"]["kernel"], (1, 1, 24, 4))
  chex.assert_shape(params["s2_b2"]["se"]["reduce"]["kernel"], (1, 1, 24, 6))
  chex.assert_shape(params["s2_b2"]["se"]["expand"]["kernel"], (1, 1, 6, 24))
  chex.assert_shape(params["s2_b2"]["se"]["expand"]["bias"], (24,))


def test_pycls_initialisation():
  spec = zoo.get_spec("regnetx_200mf")
  model = anynet.build_model(spec, conv_impl="xla")
  params = _init(model, (1, 64, 64, 3))["params"]
  kernel = params["s4_b1"]["b"]["kernel"]  # 3x3, 368 outputs, fan-out std sqrt(2/(9*368)), groups ignored
  np.testing.assert_allclose(float(jnp.std(kernel)), math.sqrt(2 / (9 * 368)), rtol=0.05)
  np.testing.assert_allclose(float(jnp.std(params["head"]["fc"]["kernel"])), 0.01, rtol=0.05)
  assert float(jnp.abs(params["head"]["fc"]["bias"]).max()) == 0.0
  assert float(jnp.min(params["s1_b1"]["b_bn"]["scale"])) == 1.0


def test_symmetric_padding_matches_explicit_conv():
  # A stride-2 3x3 conv on an even input pads (1, 1), as pycls/torchvision do, not 'SAME' (0, 1).
  conv = layers.Conv(4, 3, stride=2, conv_impl="xla")
  x = _images((1, 8, 8, 2))
  v = conv.init(jax.random.key(0), x)
  y = conv.apply(v, x)
  ref = jax.lax.conv_general_dilated(x, v["params"]["kernel"], (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, ref, rtol=1e-6)
  same = jax.lax.conv_general_dilated(x, v["params"]["kernel"], (2, 2), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert not np.allclose(y, same)


def test_scan_blocks_equals_unrolled():
  spec = AnyNetSpec.from_lists(depths=(1, 4), widths=(16, 24), group_ws=(8, 8), stem_w=8, se_ratio=0.25)
  unrolled = anynet.build_model(spec, num_classes=5, conv_impl="xla")
  scanned = anynet.build_model(spec, num_classes=5, conv_impl="xla", scan_blocks=True)
  x = _images((2, 32, 32, 3))
  v = _init(unrolled, x.shape)
  vs = {k: anynet.stack_block_params(spec, t) for k, t in v.items()}
  chex.assert_trees_all_equal_shapes(vs, _init(scanned, x.shape))
  assert "s2_rest" in vs["params"] and "s2_b3" not in vs["params"]
  for train in (False, True):
    y_u, st_u = unrolled.apply(v, x, train=train, mutable=["batch_stats"])
    y_s, st_s = scanned.apply(vs, x, train=train, mutable=["batch_stats"])
    np.testing.assert_allclose(y_s, y_u, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(anynet.unstack_block_params(spec, st_s["batch_stats"]), st_u["batch_stats"],
                                rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_equal(anynet.unstack_block_params(spec, vs["params"]), v["params"])


def test_half_precision_computes_in_bf16_with_f32_params():
  model = anynet.build_model(TINY, num_classes=5, conv_impl="xla", dtype=jnp.bfloat16)
  x = _images((2, 32, 32, 3))
  variables = _init(model, x.shape)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  logits, state = model.apply(variables, x, mutable=["intermediates"])
  assert state["intermediates"]["s1_out"][0].dtype == jnp.bfloat16
  chex.assert_type(logits, jnp.float32)
  f32 = anynet.build_model(TINY, num_classes=5, conv_impl="xla").apply(variables, x)
  np.testing.assert_allclose(logits, f32, atol=0.05, rtol=0.05)


def test_build_model_rejects_bad_arguments():
  with pytest.raises(TypeError, match="AnyNetSpec"):
    anynet.build_model("regnetx32")
  with pytest.raises(ValueError, match="num_classes=0"):
    anynet.build_model(TINY, num_classes=0)
