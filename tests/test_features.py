"""Backbone features (timm's `features_only` contract): the maps and feature_info equal timm's, out_indices,
forward_features / pre_logits against the logits, plain NHWC on the blocked layout, and converted weights
loading into the headless model with the head ignored (and said so once).

The timm comparisons need the test extra's torch and timm and skip without them.
"""

import logging
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax import anynet, layers, zoo
from regnet_jax import weights as W
from regnet_jax.specs import AnyNetSpec
from regnet_jax.weights import io as weights_io
from regnet_jax.weights import names
from test_weights import TOL, _assert_trees_equal, _random_variables, _torch  # pytest puts tests/ on sys.path

# One X, one Y and the smallest of timm's torchvision ports (regnetx_004_tv).
TIMM_MODELS = ["regnetx_200mf", "regnety_200mf", "regnetx_400mf_tv"]
HEAD_KEYS = ["head.fc.bias", "head.fc.weight"]


def _images_nchw(seed=1, shape=(2, 3, 64, 72)):  # non-square: catches H/W mix-ups
  return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


def _nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def _trunk(variables):
  return {c: {k: v for k, v in variables[c].items() if k != "head"} for c in ("params", "batch_stats")}


def _ignore_messages(caplog):
  return [r.getMessage() for r in caplog.records if r.getMessage().startswith("features_only:")]


@pytest.fixture(scope="module", params=TIMM_MODELS)
def timm_pair(request):
  """(zoo name, timm classifier, timm features_only model holding the classifier's trunk), random BN stats."""
  reference = _torch("timm")
  import timm
  name = request.param
  classifier = reference.randomize_(reference.build_torch_model("timm", name), seed=0)
  features = timm.create_model(names.source_name(name, "timm"), pretrained=False, features_only=True)
  load = features.load_state_dict(classifier.state_dict(), strict=False)
  assert not load.missing_keys and sorted(load.unexpected_keys) == HEAD_KEYS
  return name, classifier, features.eval()


def test_feature_maps_and_info_equal_timm(timm_pair, caplog):
  import torch
  name, classifier, features = timm_pair
  with caplog.at_level(logging.INFO, logger="absl"):
    variables = W.from_torch_state_dict(classifier.state_dict(), name, "timm", features_only=True)
  assert _ignore_messages(caplog) == [
      f"features_only: ignored the 2 head tensors of the timm state dict for {name} ({', '.join(HEAD_KEYS)})"]
  assert "head" not in variables["params"] and "head" not in variables["batch_stats"]
  net = anynet.build_model(zoo.get_spec(name), features_only=True, conv_impl="xla")
  assert net.feature_info == features.feature_info.get_dicts()
  x = _images_nchw()
  with torch.no_grad():
    want = [t.numpy() for t in features(torch.from_numpy(x))]
  got = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, _nhwc(x))
  assert len(got) == len(want) == 5
  for level, (g, w) in enumerate(zip(got, want)):
    assert g.shape == _nhwc(w).shape, level
    assert float(np.max(np.abs(w))) > 0.5  # O(1) activations: the absolute tolerance is meaningful
    np.testing.assert_allclose(np.asarray(g), _nhwc(w), atol=TOL, rtol=0, err_msg=f"level {level}")


def test_forward_features_and_pre_logits_equal_timm():
  """On one model (with SE: every kind of layer), which keeps the file fast; the maps check all three."""
  reference = _torch("timm")
  import torch
  name = "regnety_200mf"
  classifier = reference.randomize_(reference.build_torch_model("timm", name), seed=1)
  variables = W.from_torch_state_dict(classifier.state_dict(), name, "timm")
  net = anynet.build_model(zoo.get_spec(name), conv_impl="xla")
  x = _images_nchw(seed=2)
  with torch.no_grad():
    t = torch.from_numpy(x)
    want_features = classifier.forward_features(t).numpy()
    want_pooled = classifier.forward_head(classifier.forward_features(t), pre_logits=True).numpy()
    want_logits = classifier(t).numpy()

  @jax.jit
  def outputs(v, x):  # three applies, one compile
    return (net.apply(v, x, method=net.forward_features), net.apply(v, x, method=net.pre_logits),
            net.apply(v, x))

  features, pooled, logits = jax.tree.map(np.asarray, outputs(variables, _nhwc(x)))
  np.testing.assert_allclose(features, _nhwc(want_features), atol=TOL, rtol=0)
  np.testing.assert_allclose(pooled, want_pooled, atol=TOL, rtol=0)
  np.testing.assert_allclose(logits, want_logits, atol=TOL, rtol=0)
  fc = variables["params"]["head"]["fc"]
  np.testing.assert_allclose(pooled @ fc["kernel"] + fc["bias"], logits, atol=1e-5, rtol=0)
  np.testing.assert_allclose(features.mean(axis=(1, 2)), pooled, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------- out_indices

SMALL = "regnetx_200mf"


FOUR = AnyNetSpec.from_lists(depths=(1, 1, 1, 1), widths=(8, 16, 24, 32), group_ws=(8, 8, 8, 8), stem_w=8)


def test_negative_and_reordered_indices_select_the_same_maps():
  full = anynet.build_model(FOUR, features_only=True, conv_impl="xla")
  x = jnp.asarray(_nhwc(_images_nchw(seed=3, shape=(2, 3, 32, 32))))
  variables = _trunk(_random_variables(FOUR))  # (jitted init compiles for long: its random draws)
  selections = [((-1,), (4,)), ((1, -1), (1, 4)), ((-5, -2), (0, 3)), ((4, 0), (4, 0))]
  nets = [anynet.build_model(FOUR, features_only=True, out_indices=i, conv_impl="xla") for i, _ in selections]
  for net, (_, levels) in zip(nets, selections):
    assert net.out_indices == levels
    assert [d["index"] for d in net.feature_info] == list(levels)
  # the same variables whatever the selection: every stage is built
  maps, *selected = jax.jit(lambda v, x: [n.apply(v, x) for n in [full] + nets])(variables, x)
  for got, (_, levels) in zip(selected, selections):
    assert len(got) == len(levels)
    for g, level in zip(got, levels):
      np.testing.assert_array_equal(g, maps[level])
  assert anynet.feature_info(zoo.get_spec(SMALL), (-1,)) == [
      {"num_chs": 368, "reduction": 32, "module": "s4", "index": 4}]


def test_timm_feature_info_with_negative_indices():
  _torch("timm")
  import timm
  import torch
  for out_indices in [(-1,), (1, -1), (0, 2, -2)]:
    with torch.device("meta"):  # feature_info needs no weights
      want = timm.create_model("regnety_002", features_only=True, out_indices=out_indices).feature_info.get_dicts()
    net = anynet.build_model(zoo.get_spec("regnety_200mf"), features_only=True, out_indices=out_indices)
    assert net.feature_info == want, out_indices


@pytest.mark.parametrize("out_indices,error,match", [
    ((5,), ValueError, r"out_indices=\(5,\) has \[5\] outside the valid range -5..4"),
    ((0, -6), ValueError, r"has \[-6\] outside the valid range -5..4"),
    ((1, -4), ValueError, r"names a feature map twice \(as \(1, 1\)\); each index of the valid range -5..4"),
    ((), ValueError, r"out_indices=\(\) is empty; pick from the valid range -5..4"),
    (3, TypeError, "out_indices must be a sequence of ints, got 3"),
    (("s1",), TypeError, "sequence of ints"),
])
def test_bad_out_indices_fail_at_build_time(out_indices, error, match):
  with pytest.raises(error, match=match):
    anynet.build_model(zoo.get_spec(SMALL), features_only=True, out_indices=out_indices)


def test_out_indices_need_features_only_and_headless_model_has_no_classifier_methods():
  with pytest.raises(ValueError, match=r"out_indices=\(1, 2\) selects the maps of a backbone; pass features_only"):
    anynet.build_model(zoo.get_spec(SMALL), out_indices=(1, 2))
  net = anynet.build_model(zoo.get_spec(SMALL), features_only=True, conv_impl="xla")
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  for method in (net.forward_features, net.pre_logits):
    with pytest.raises(ValueError, match="a features_only model has no head"):
      jax.eval_shape(lambda x: net.init(jax.random.key(0), x, method=method), x)


# ------------------------------------------------------------------------------------------- the model

TINY = AnyNetSpec.from_lists(depths=(1, 3), widths=(16, 24), group_ws=(8, 8), stem_w=8, se_ratio=0.25)


def test_features_model_has_the_classifiers_variables_less_the_head():
  x = jnp.zeros((1, 32, 32, 3))
  spec = TINY.replace(head_w=32)
  backbone = jax.eval_shape(lambda: anynet.build_model(spec, features_only=True).init(jax.random.key(0), x))
  classifier = jax.eval_shape(lambda: anynet.build_model(spec, num_classes=7).init(jax.random.key(0), x))
  assert set(classifier["params"]["head"]) == {"conv", "conv_bn", "fc"} and "head" in classifier["batch_stats"]
  for collection in ("params", "batch_stats"):
    trunk = {k: v for k, v in classifier[collection].items() if k != "head"}
    assert jax.tree.map(lambda a: (a.shape, a.dtype), backbone[collection]) == jax.tree.map(
        lambda a: (a.shape, a.dtype), trunk)
  assert W.abstract_variables(spec, 7, 3, features_only=True) == {k: backbone[k] for k in ("params", "batch_stats")}


@pytest.mark.parametrize("stem_type,block_type", [("simple", "bottleneck"), ("res", "basic"), ("cifar", "vanilla")])
def test_feature_info_describes_the_maps(stem_type, block_type):
  """num_chs and reduction (input size / map size) as the maps have them, for every stem's stride."""
  spec = TINY.replace(stem_type=stem_type, block_type=block_type, se_ratio=0.0)
  net = anynet.build_model(spec, features_only=True, scan_blocks=True)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  maps = jax.eval_shape(lambda x: net.apply(net.init(jax.random.key(0), x), x), x)
  assert [m.shape for m in maps] == [(2, 64 // d["reduction"], 64 // d["reduction"], d["num_chs"])
                                     for d in net.feature_info]
  assert [d["module"] for d in net.feature_info] == ["stem", "s1", "s2"]


def test_pre_logits_with_a_head_conv_give_the_logits():
  spec = TINY.replace(head_w=32)
  net = anynet.build_model(spec, num_classes=7, conv_impl="xla")
  x = jnp.asarray(_nhwc(_images_nchw(seed=4, shape=(3, 3, 32, 40))))
  variables = _random_variables(spec, num_classes=7)  # random BN statistics too: eval BN is not the identity
  features, pooled, logits = jax.jit(lambda v, x: (net.apply(v, x, method=net.forward_features),
                                                   net.apply(v, x, method="pre_logits"), net.apply(v, x)))(variables, x)
  assert features.shape == (3, 4, 5, 32) and pooled.shape == (3, 32) and pooled.dtype == jnp.float32
  fc = variables["params"]["head"]["fc"]
  np.testing.assert_allclose(pooled @ fc["kernel"] + fc["bias"], logits, atol=1e-5, rtol=0)
  np.testing.assert_allclose(features.mean(axis=(1, 2)), pooled, atol=1e-6, rtol=0)


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                    reason="the oneDNN extension is built for x86-64 Linux only")
def test_maps_are_nhwc_on_the_blocked_layout():
  """Training with the oneDNN blocked layout (activations nChw16c between layers): the maps are NHWC and
  equal those of the NHWC oneDNN convs; forward_features too."""
  spec = AnyNetSpec.from_lists(depths=(1, 2), widths=(32, 48), group_ws=(16, 16), stem_w=16)  # multiples of 16
  assert layers.network_blocked(spec, train=True, conv_impl="onednn_blocked", bn_impl="auto", dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = _trunk(_random_variables(spec, num_classes=10))

  def run(conv_impl, features_only, method=None):
    net = anynet.build_model(spec, num_classes=10, conv_impl=conv_impl, features_only=features_only)
    method = getattr(net, method) if method else None
    out, _ = jax.jit(lambda v: net.apply(v, x, train=True, mutable=["batch_stats"], method=method))(variables)
    return jax.tree.map(np.asarray, out)

  for features_only, method in ((True, None), (False, "forward_features")):
    want, got = run("onednn", features_only, method), run("onednn_blocked", features_only, method)
    assert jax.tree.map(np.shape, got) == jax.tree.map(np.shape, want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(w))))


# ------------------------------------------------------------------------------------------- loading weights


@pytest.mark.parametrize("source", W.SOURCES)
def test_conversion_ignores_the_head_and_says_so_once(source, caplog):
  variables = _random_variables(SMALL)
  state = W.to_torch_state_dict(variables, SMALL, source)
  trunk = _trunk(variables)
  with caplog.at_level(logging.INFO, logger="absl"):
    got = W.from_torch_state_dict(state, SMALL, source, features_only=True)
  _assert_trees_equal(got, trunk)
  assert len(_ignore_messages(caplog)) == 1 and "ignored the 2 head tensors" in _ignore_messages(caplog)[0]
  # a head of any size, or none at all
  fc = W.expected_keys(SMALL, source)  # the fc's torch names
  fc = [k for k, (_, path, _) in fc.items() if path[0] == "head"]
  other_head = {**state, **{k: np.zeros((10,) + state[k].shape[1:], np.float32) for k in fc}}
  _assert_trees_equal(W.from_torch_state_dict(other_head, SMALL, source, features_only=True), trunk)
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="absl"):
    headless = W.from_torch_state_dict({k: v for k, v in state.items() if k not in fc}, SMALL, source,
                                       features_only=True)
  _assert_trees_equal(headless, trunk)
  assert not _ignore_messages(caplog)


def test_conversion_stays_strict_for_the_trunk():
  state = W.to_torch_state_dict(_random_variables(SMALL), SMALL, "timm")
  del state["s2.b1.conv1.conv.weight"]
  state["s2.b1.conv9.conv.weight"] = np.zeros((3, 3))
  state["s3.b1.conv2.bn.weight"] = np.zeros((5,), np.float32)
  with pytest.raises(W.WeightConversionError, match=r"does not match regnetx_200mf \(features_only\): 1 missing, "
                                                    r"1 unexpected, 1 wrong shape") as e:
    W.from_torch_state_dict(state, SMALL, "timm", features_only=True)
  assert "head" not in str(e.value)


def test_converted_checkpoint_restores_into_the_features_model(tmp_path, caplog):
  variables = _random_variables(SMALL)
  np.savez(tmp_path / "timm.npz", **W.to_torch_state_dict(variables, SMALL, "timm"))
  W.convert_checkpoint(source="timm", model=SMALL, checkpoint=tmp_path / "timm.npz", out=tmp_path / "out")
  with caplog.at_level(logging.INFO, logger="absl"):
    restored = weights_io.restore_variables(tmp_path / "out", SMALL, features_only=True, num_classes=5)
  assert _ignore_messages(caplog) == [
      f"features_only: the 2 head variables of {SMALL} in {tmp_path / 'out'} are not read "
      "(params/head/fc/bias, params/head/fc/kernel)"]
  trunk = _trunk(variables)
  _assert_trees_equal(jax.tree.map(np.asarray, restored), trunk)
  # the classifier restores as before, head included
  _assert_trees_equal(jax.tree.map(np.asarray, weights_io.restore_variables(tmp_path / "out", SMALL)), variables)
