"""conv_impl="onednn_blocked" (what auto is on one CPU): activations in oneDNN's nChw16c layout between layers.

The layout is an implementation detail: the batch norm kernels and the oneDNN convs must give what they give on NHWC
to float rounding (sums run in another order), and a whole network the same loss, gradients and running statistics
whichever layout it trains on."""
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax import anynet, batchnorm_cpu, convs, layers, onednn, zoo
from regnet_jax.specs import AnyNetSpec, StageSpec

pytestmark = pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                                reason="the oneDNN extension is built for x86-64 Linux only")


def _f32(tree):
  return [np.asarray(jnp.asarray(a, jnp.float32)) for a in jax.tree.leaves(tree)]


def _bn(x, residual, *, x_blocked, y_blocked, relu, dtype, groups=1):
  """y (NHWC), mean, var and the gradients of a fixed projection of y wrt x, scale, bias and the residual, with x
  and y (and the residual) handed over in the given layouts."""
  c = x.shape[-1]
  scale, bias = jnp.linspace(0.5, 1.5, c), jnp.linspace(-1.0, 1.0, c)
  w = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)

  def f(x, scale, bias, residual):
    xin = onednn.to_blocked(x) if x_blocked else x
    r = None if residual is None else (onednn.to_blocked(residual) if y_blocked else residual).astype(dtype)
    xg = xin.astype(dtype).reshape((groups, -1) + xin.shape[1:])
    rg = None if r is None else r.reshape((groups, -1) + r.shape[1:])
    y, mean, var = batchnorm_cpu.batch_norm_act(xg, scale, bias, rg, epsilon=1e-5, relu=relu, x_blocked=x_blocked,
                                                y_blocked=y_blocked)
    y = y.reshape((x.shape[0],) + y.shape[2:])
    y = onednn.from_blocked(y) if y_blocked else y
    return jnp.sum(y.astype(jnp.float32) * w), (y, mean, var)

  argnums = (0, 1, 2) if residual is None else (0, 1, 2, 3)
  return _f32(jax.value_and_grad(f, argnums=argnums, has_aux=True)(x, scale, bias, residual))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("layout", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("residual,relu,groups", [(False, True, 1), (True, True, 2), (True, False, 1),
                                                  (False, False, 2)])
def test_batch_norm_in_blocked_layouts_equals_nhwc(dtype, layout, residual, relu, groups):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(3.0, 2.0, (4, 5, 7, 48)), jnp.float32)
  r = jnp.asarray(rng.normal(0.0, 1.0, x.shape), jnp.float32) if residual else None
  want = _bn(x, r, x_blocked=False, y_blocked=False, relu=relu, dtype=dtype, groups=groups)
  got = _bn(x, r, x_blocked=layout[0], y_blocked=layout[1], relu=relu, dtype=dtype, groups=groups)
  assert len(got) == len(want) == (8 if residual else 7)
  # f32: rounding of the (reordered) channel sums; bf16: that rounding can move an output by one bf16 step.
  tol = 2e-6 if dtype == jnp.float32 else 1e-2
  for g, w in zip(got, want):
    assert float(np.max(np.abs(g - w))) <= tol * (float(np.max(np.abs(w))) + 1e-12)


@pytest.mark.parametrize("k,stride,groups,cin,cout", [(3, 1, 2, 32, 32), (3, 2, 5, 80, 80), (1, 1, 1, 32, 80),
                                                      (1, 2, 1, 32, 48), (3, 2, 1, 16, 32)])
def test_blocked_conv_equals_nhwc_conv(k, stride, groups, cin, cout):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (3, 9, 10, cin))
  kernel = jax.random.normal(keys[1], (k, k, cin // groups, cout)) * 0.2
  ho, wo = (9 - 1) // stride + 1, (10 - 1) // stride + 1
  dy = jax.random.normal(keys[2], (3, ho, wo, cout))

  def nhwc(x, kernel):
    y = onednn.conv2d(x, kernel, stride, groups)
    return jnp.vdot(y, dy), y

  def blocked(x, kernel):
    y = onednn.from_blocked(onednn.conv2d(onednn.to_blocked(x), kernel, stride, groups, blocked=True))
    return jnp.vdot(y, dy), y

  want = jax.value_and_grad(nhwc, argnums=(0, 1), has_aux=True)(x, kernel)
  got = jax.value_and_grad(blocked, argnums=(0, 1), has_aux=True)(x, kernel)
  for g, w in zip(_f32(got), _f32(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(w))))


def test_blocked_layout_rejects_what_it_cannot_hold():
  with pytest.raises(ValueError, match="divisible by 16"):
    onednn.to_blocked(jnp.zeros((1, 4, 4, 24)))
  with pytest.raises(ValueError, match="blocked conv"):
    onednn.conv2d(jnp.zeros((1, 2, 4, 4, 16)), jnp.zeros((3, 3, 32, 24)), 1, 1, blocked=True)
  with pytest.raises(ValueError, match="C % 16"):
    batchnorm_cpu.batch_norm_act(jnp.zeros((1, 2, 4, 4, 24)), jnp.ones(24), jnp.zeros(24), epsilon=1e-5,
                                 relu=True, y_blocked=True)
  bn = layers.BatchNorm(use_running_average=False, impl="xla")
  with pytest.raises(ValueError, match="bn_impl native"):
    bn.init(jax.random.key(0), jnp.zeros((2, 1, 4, 4, 16)), x_blocked=True)


def _spec(name):
  return zoo.get_spec(name)


# auto takes the blocked layout only where oneDNN has optimised nChw16c kernels (AVX-512; onednn.probe).
AUTO_BLOCKS = onednn.probe(jnp.float32, blocked=True) == onednn.OPTIMISED


def test_auto_keeps_nhwc_where_onednn_has_only_reference_blocked_kernels(monkeypatch):
  """As on an AVX2-only CPU: there nChw16c convolutions are oneDNN's reference loops (~100x slower)."""
  real = onednn.probe
  monkeypatch.setattr(onednn, "probe", lambda dtype, blocked=False: (
      onednn.REFERENCE_ONLY if blocked else real(dtype, blocked)))
  kw = dict(train=True, conv_impl="auto", bn_impl="auto", dtype=jnp.float32)
  assert not layers.network_blocked(_spec("regnetx32"), **kw)
  assert layers.network_blocked(_spec("regnetx32"), **{**kw, "conv_impl": "onednn_blocked"})  # asked for: kept
  assert convs.resolve_impl("auto", k=3, stride=2, groups=2, cin=32, cout=32, spatial=48) == "onednn"  # NHWC


def test_network_blocked_only_where_it_applies():
  kw = dict(train=True, conv_impl="auto", bn_impl="auto", dtype=jnp.float32)
  if not AUTO_BLOCKS:
    kw["conv_impl"] = "onednn_blocked"  # this CPU: auto stays NHWC (the test above); the rules below still hold
  assert layers.network_blocked(_spec("regnetx32"), **kw)
  assert layers.network_blocked(_spec("regnety32"), **kw)
  assert layers.network_blocked(_spec("regnetx32"), **{**kw, "conv_impl": "onednn_blocked"})
  assert not layers.network_blocked(_spec("regnetx32"), **{**kw, "conv_impl": "auto", "dtype": jnp.bfloat16})
  assert layers.network_blocked(_spec("regnetx32"), **{**kw, "dtype": jnp.bfloat16, "conv_impl": "onednn_blocked"})
  assert not layers.network_blocked(_spec("regnetx32"), **{**kw, "train": False})  # eval: XLA's affine BN
  assert not layers.network_blocked(_spec("regnetx32"), **{**kw, "conv_impl": "onednn"})  # NHWC asked for
  assert not layers.network_blocked(_spec("regnetx32"), **{**kw, "bn_impl": "xla"})
  assert not layers.network_blocked(_spec("regnetx_200mf"), **kw)  # widths 24, 56, 152, 368
  assert layers.network_blocked(_spec("regnetx_400mf"), **kw)
  # Widths multiples of 16 but groups of 24 channels: oneDNN has no blocked kernel for a group that splits a
  # 16-channel block (it would run its reference code, minutes a step for regnety_32gf's groups of 232).
  split_groups = AnyNetSpec(stem_w=32, stages=(StageSpec(depth=1, width=48, stride=2, group_w=24),))
  assert not layers.network_blocked(split_groups, **kw)


@pytest.mark.parametrize("group_w,blocked", [(16, True), (24, False)])
def test_block_blocks_its_grouped_conv_only_for_whole_blocks_per_group(group_w, blocked):
  """Stem 24 keeps the net NHWC; the block's grouped conv (48 channels) takes the blocked layout iff each group
  is whole 16-channel blocks: its blocked (N, 3, H, W, 16) activations show in the traced step."""
  spec = AnyNetSpec(stem_w=24, stages=(StageSpec(depth=1, width=48, stride=2, group_w=group_w),))
  net = anynet.build_model(spec, num_classes=10)
  x = jnp.zeros((2, 16, 16, 1))
  variables = net.init(jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(lambda v: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables))
  assert ("f32[2,3,4,4,16]" in jaxpr) == (blocked and AUTO_BLOCKS)


def _train_outputs(spec, impl, x, *, scan_blocks=False, bn_groups=1, dtype=jnp.float32, variables=None):
  net = anynet.build_model(spec, num_classes=10, conv_impl=impl, scan_blocks=scan_blocks, bn_groups=bn_groups,
                           dtype=dtype)
  variables = variables or net.init(jax.random.key(1), x, train=False)

  def loss(params):
    logits, new = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), new

  (value, new), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  return value, _f32((grads, new)), variables


# A bottleneck net whose widths are not all multiples of 16 (stem 24, stage 1 40): only the grouped convs whose
# width is (stage 2, 48) take the blocked layout, the BNs around them converting.
_MIXED = AnyNetSpec(stem_type="simple", stem_w=24, block_type="bottleneck",
                    stages=(StageSpec(depth=1, width=40, stride=2, bot_mul=1.0, group_w=8),
                            StageSpec(depth=2, width=48, stride=2, bot_mul=1.0, group_w=16)))


@pytest.mark.parametrize("spec,scan_blocks,bn_groups", [(_spec("regnetx32"), False, 1), (_spec("regnety32"), True, 2),
                                                        (_MIXED, False, 1)])
def test_model_trains_the_same_on_either_layout(spec, scan_blocks, bn_groups):
  """Loss, every gradient and the new running statistics: onednn_blocked (auto) vs NHWC onednn."""
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 1))
  want, want_leaves, variables = _train_outputs(spec, "onednn", x, scan_blocks=scan_blocks, bn_groups=bn_groups)
  got, got_leaves, _ = _train_outputs(spec, "auto", x, scan_blocks=scan_blocks, bn_groups=bn_groups,
                                      variables=variables)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert len(got_leaves) == len(want_leaves)
  for g, w in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(w))) + 1e-7)


@pytest.mark.skipif(not onednn.supports(jnp.bfloat16), reason="this CPU's oneDNN has no bfloat16 convolutions "
                    "(needs AVX-512 or AVX2-VNNI-2); tests/test_convs.py checks the error it gives")
@pytest.mark.slow  # CI runs it (.ci/run: -m slow); the default suite stays near 10 minutes
def test_model_bf16_on_the_blocked_layout_is_close():
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 1))
  spec = _spec("regnety32")
  want, want_leaves, variables = _train_outputs(spec, "onednn", x, dtype=jnp.bfloat16)
  got, got_leaves, _ = _train_outputs(spec, "onednn_blocked", x, dtype=jnp.bfloat16, variables=variables)
  np.testing.assert_allclose(got, want, rtol=2e-2)
  for g, w in zip(got_leaves, want_leaves):
    assert float(np.max(np.abs(g - w))) <= 0.05 * float(np.max(np.abs(w))) + 1e-6
