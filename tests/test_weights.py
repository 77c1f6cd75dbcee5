"""Weight import: key maps, strictness, pycls BGR flip, preprocessing presets, checkpoint files and the CLI, and
logit equality with randomly initialised torchvision / timm models.

The torch-free tests run everywhere (state dicts made by `to_torch_state_dict`); the equivalence tests need the
test extra's torch, torchvision and timm and skip without them.
"""

import re

import jax
import numpy as np
import pytest

from regnet_jax import anynet, zoo
from regnet_jax import weights as W
from regnet_jax.specs import AnyNetSpec
from regnet_jax.weights import names

SMALL = "regnety_200mf"  # smallest zoo model with SE and projections
TOL = 1e-4


def _random_variables(name, num_classes=1000, seed=0):
  """Flax variables with random BN statistics too (init leaves them 0 / 1)."""
  spec = zoo.get_spec(name) if isinstance(name, str) else name
  abstract = W.abstract_variables(spec, num_classes, 3)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    last = path[-1].key
    if last in ("var", "scale"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if last == "kernel":  # N(0, 1/fan_in): O(1) activations and logits
      return (rng.normal(0, 1, leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    return rng.normal(0, 0.2, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _logits(name, variables, x_nhwc):
  spec = zoo.get_spec(name) if isinstance(name, str) else name
  num_classes = variables["params"]["head"]["fc"]["kernel"].shape[1]
  net = anynet.build_model(spec, num_classes=num_classes, conv_impl="xla")
  return np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x_nhwc))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------------------- key maps


@pytest.mark.parametrize("source,key,shape", [
    ("torchvision", "stem.0.weight", (32, 3, 3, 3)),
    ("torchvision", "stem.1.running_var", (32,)),
    ("torchvision", "trunk_output.block1.block1-0.proj.0.weight", (24, 32, 1, 1)),
    ("torchvision", "trunk_output.block1.block1-0.proj.1.bias", (24,)),
    ("torchvision", "trunk_output.block1.block1-0.f.b.0.weight", (24, 8, 3, 3)),  # grouped: I/g = 8
    ("torchvision", "trunk_output.block1.block1-0.f.se.fc1.weight", (8, 24, 1, 1)),  # w_se = 0.25 * w_in(32)
    ("torchvision", "trunk_output.block4.block4-6.f.se.fc2.bias", (368,)),
    ("torchvision", "fc.weight", (1000, 368)),
    ("timm", "stem.conv.weight", (32, 3, 3, 3)),
    ("timm", "s1.b1.downsample.conv.weight", (24, 32, 1, 1)),
    ("timm", "s1.b1.conv2.bn.running_mean", (24,)),
    ("timm", "s1.b1.se.fc1.bias", (8,)),
    ("timm", "s4.b7.conv3.conv.weight", (368, 368, 1, 1)),
    ("timm", "head.fc.bias", (1000,)),
    ("pycls", "stem.bn.weight", (32,)),
    ("pycls", "s1.b1.proj.weight", (24, 32, 1, 1)),
    ("pycls", "s1.b1.bn.running_var", (24,)),
    ("pycls", "s1.b1.f.a_bn.bias", (24,)),
    ("pycls", "s3.b4.f.se.f_ex.0.weight", (38, 152, 1, 1)),
    ("pycls", "s3.b4.f.se.f_ex.2.bias", (152,)),
    ("pycls", "s2.b1.f.c_bn.running_mean", (56,)),
    ("pycls", "head.fc.weight", (1000, 368)),
])
def test_expected_keys_name_every_source(source, key, shape):
  expected = W.expected_keys(SMALL, source)
  assert expected[key][2] == shape


@pytest.mark.parametrize("source", W.SOURCES)
def test_expected_keys_cover_every_variable(source):
  expected = W.expected_keys(SMALL, source)
  abstract = W.abstract_variables(zoo.get_spec(SMALL), 1000, 3)
  assert len(expected) == len(jax.tree.leaves(abstract))
  # 4 tensors per BN + weight per conv + 2 per SE conv and dense; no num_batches_tracked
  assert not any(k.endswith("num_batches_tracked") for k in expected)


@pytest.mark.parametrize("source", W.SOURCES)
@pytest.mark.parametrize("name", [SMALL, "regnetx_400mf_tv"])
def test_round_trip_through_torch_layout(source, name):
  variables = _random_variables(name)
  state = W.to_torch_state_dict(variables, name, source)
  assert sum(k.endswith("num_batches_tracked") for k in state) == sum(k.endswith("running_mean") for k in state)
  _assert_trees_equal(W.from_torch_state_dict(state, name, source), variables)


def test_layouts_are_transposed_not_reshaped():
  variables = _random_variables(SMALL)
  state = W.to_torch_state_dict(variables, SMALL, "torchvision")
  hwio = np.asarray(variables["params"]["s1_b1"]["b"]["kernel"])  # (3, 3, 8, 24) grouped
  np.testing.assert_array_equal(state["trunk_output.block1.block1-0.f.b.0.weight"], hwio.transpose(3, 2, 0, 1))
  dense = np.asarray(variables["params"]["head"]["fc"]["kernel"])
  np.testing.assert_array_equal(state["fc.weight"], dense.T)


@pytest.mark.parametrize("block_type,stem_type", [("vanilla", "cifar"), ("basic", "res")])
def test_pycls_other_blocks_round_trip(block_type, stem_type):
  spec = AnyNetSpec.from_lists(depths=(1, 2), widths=(16, 24), stem_w=8, block_type=block_type,
                               stem_type=stem_type)
  variables = _random_variables(spec, num_classes=10)
  state = W.to_torch_state_dict(variables, spec, "pycls")
  if block_type == "vanilla":
    assert "s2.b2.a_bn.running_var" in state and not any(".f." in k for k in state)
  else:
    assert {"s1.b1.proj.weight", "s1.b1.bn.weight", "s2.b2.f.b_bn.bias"} <= set(state)
  _assert_trees_equal(W.from_torch_state_dict(state, spec, "pycls"), variables)
  with pytest.raises(ValueError, match="bottleneck"):
    W.expected_keys(spec, "timm")


def test_infers_num_classes_and_converts_d2l_model():
  variables = _random_variables("regnetx32", num_classes=10)
  variables["params"]["stem"]["conv"]["kernel"] = variables["params"]["stem"]["conv"]["kernel"][:, :, :1, :]
  state = W.to_torch_state_dict(variables, "regnetx32", "pycls")
  out = W.from_torch_state_dict(state, "regnetx32", "pycls")
  assert out["params"]["head"]["fc"]["kernel"].shape == (80, 10)
  assert out["params"]["stem"]["conv"]["kernel"].shape == (3, 3, 1, 32)


# ------------------------------------------------------------------------------------------- strictness


@pytest.fixture(scope="module")
def tv_state():
  return W.to_torch_state_dict(_random_variables(SMALL), SMALL, "torchvision")


def test_missing_key_is_named(tv_state):
  state = dict(tv_state)
  del state["trunk_output.block2.block2-0.f.se.fc1.bias"]
  with pytest.raises(W.WeightConversionError, match=r"1 missing") as e:
    W.from_torch_state_dict(state, SMALL, "torchvision")
  assert "trunk_output.block2.block2-0.f.se.fc1.bias (expected shape (6,))" in str(e.value)
  assert e.value.missing == (("trunk_output.block2.block2-0.f.se.fc1.bias", (6,)),)


def test_extra_key_is_named(tv_state):
  state = {**tv_state, "trunk_output.block1.block1-0.f.extra.weight": np.zeros((3, 4))}
  with pytest.raises(W.WeightConversionError, match=r"1 unexpected") as e:
    W.from_torch_state_dict(state, SMALL, "torchvision")
  assert "trunk_output.block1.block1-0.f.extra.weight shape (3, 4)" in str(e.value)


def test_stray_num_batches_tracked_is_unexpected(tv_state):
  state = {**tv_state, "trunk_output.block9.num_batches_tracked": np.zeros((), np.int64)}
  with pytest.raises(W.WeightConversionError, match="block9.num_batches_tracked"):
    W.from_torch_state_dict(state, SMALL, "torchvision")
  # ... while the BN ones are optional
  plain = {k: v for k, v in tv_state.items() if not k.endswith("num_batches_tracked")}
  W.from_torch_state_dict(plain, SMALL, "torchvision")


def test_wrong_shape_is_named(tv_state):
  state = {**tv_state, "trunk_output.block3.block3-1.f.b.0.weight": np.zeros((152, 4, 3, 3), np.float32)}
  with pytest.raises(W.WeightConversionError, match=r"1 wrong shape") as e:
    W.from_torch_state_dict(state, SMALL, "torchvision")
  assert "trunk_output.block3.block3-1.f.b.0.weight: got (152, 4, 3, 3), expected (152, 8, 3, 3)" in str(e.value)


def test_wrong_source_and_wrong_model_hints(tv_state):
  with pytest.raises(W.WeightConversionError, match="look like a 'torchvision' checkpoint"):
    W.from_torch_state_dict(tv_state, SMALL, "timm")
  # regnety_200mf and regnetx_200mf differ only by SE: the X model's dict names the X model
  x_state = W.to_torch_state_dict(_random_variables("regnetx_200mf"), "regnetx_200mf", "torchvision")
  with pytest.raises(W.WeightConversionError, match="match zoo model.s. regnetx_200mf"):
    W.from_torch_state_dict(x_state, SMALL, "torchvision")


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown weight source 'caffe2'; known: torchvision, timm, pycls"):
    W.from_torch_state_dict({}, SMALL, "caffe2")
  with pytest.raises(ValueError, match="rgb_input"):
    W.from_torch_state_dict({}, SMALL, "torchvision", rgb_input=True)
  with pytest.raises(zoo.UnknownModelError, match="regnety_200mf"):
    W.from_torch_state_dict({}, "regnety_200m", "pycls")


# ------------------------------------------------------------------------------------------- pycls BGR


def test_pycls_rgb_input_flips_the_stem_channels():
  variables = _random_variables(SMALL)
  state = W.to_torch_state_dict(variables, SMALL, "pycls")  # pretend these are BGR pycls weights
  bgr = W.from_torch_state_dict(state, SMALL, "pycls")
  rgb = W.from_torch_state_dict(state, SMALL, "pycls", rgb_input=True)
  np.testing.assert_array_equal(rgb["params"]["stem"]["conv"]["kernel"],
                                bgr["params"]["stem"]["conv"]["kernel"][:, :, ::-1, :])
  x_rgb = np.asarray(jax.random.normal(jax.random.key(3), (2, 40, 48, 3)))
  np.testing.assert_allclose(_logits(SMALL, rgb, x_rgb), _logits(SMALL, bgr, x_rgb[..., ::-1]), atol=1e-5)
  # and back: exporting RGB variables as pycls restores the BGR stem
  back = W.to_torch_state_dict(rgb, SMALL, "pycls", rgb_input=True)
  np.testing.assert_array_equal(back["stem.conv.weight"], state["stem.conv.weight"])


# ------------------------------------------------------------------------------------------- names, presets


def test_name_maps_point_at_zoo_models():
  for table in (names.TORCHVISION, names.TIMM):
    for zoo_name, other in table.items():
      zoo.get_spec(zoo_name)
      source = "torchvision" if table is names.TORCHVISION else "timm"
      assert names.zoo_name(other, source) == zoo_name
  # torchvision's rounding differs for these three: only the _tv models map to them
  assert names.source_name("regnetx_400mf_tv", "torchvision") == "regnet_x_400mf"
  assert names.source_name("regnety_8gf_tv", "timm") == "regnety_080_tv"
  assert names.zoo_name("regnetx_032.pycls_in1k", "timm") == "regnetx_3.2gf"
  with pytest.raises(ValueError, match="torchvision has no model equal to zoo model 'regnetx_400mf'"):
    names.source_name("regnetx_400mf", "torchvision")
  assert len(names.TORCHVISION) == 14 and len(names.TIMM) == 27


def test_preprocessing_presets():
  assert (W.PYCLS.resize_size, W.PYCLS.crop_size, W.PYCLS.channel_order) == (256, 224, "BGR")
  assert (W.TORCHVISION_V1.resize_size, W.TORCHVISION_V1.crop_size, W.TORCHVISION_V1.channel_order) == (256, 224,
                                                                                                         "RGB")
  assert (W.TORCHVISION_V2.resize_size, W.TORCHVISION_V2.crop_size) == (232, 224)
  assert W.PYCLS_RGB.channel_order == "RGB" and W.PYCLS_RGB.resize_size == 256
  np.testing.assert_allclose(W.PYCLS.mean, (123.675, 116.28, 103.53))
  assert W.TORCHVISION_V2.config_overrides() == {"image_size": 224, "eval_resize": 232, "channel_order": "RGB"}
  assert W.default_preset("pycls", rgb_input=True) == "pycls_rgb" and W.default_preset("timm") is None
  with pytest.raises(ValueError, match="channel_order='GBR'"):
    W.EvalPreprocessing(256, 224, channel_order="GBR")
  with pytest.raises(AttributeError):
    W.PYCLS.resize_size = 1  # frozen
  # timm's pycls-port and torchvision-v2 configs (values from timm's regnet.py)
  pyc = W.from_timm_pretrained_cfg({"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic",
                                    "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
  assert (pyc.resize_size, pyc.crop_size, pyc.interpolation) == (256, 224, "bicubic")
  tv2 = W.from_timm_pretrained_cfg({"input_size": (3, 224, 224), "crop_pct": 0.965})
  assert tv2.resize_size == 232
  ra = W.from_timm_pretrained_cfg({"input_size": (3, 224, 224), "crop_pct": 0.95, "test_input_size": (3, 288, 288),
                                   "test_crop_pct": 1.0}, test=True)
  assert (ra.resize_size, ra.crop_size) == (288, 288)


# ------------------------------------------------------------------------------------------- files and CLI


def test_unwrap_and_file_formats(tmp_path, tv_state):
  state, found = W.unwrap_state_dict({"epoch": 3, "model_state": tv_state, "cfg": "MODEL: ..."})
  assert found == "model_state" and state.keys() == tv_state.keys()
  state, _ = W.unwrap_state_dict({f"module.{k}": v for k, v in tv_state.items()})
  assert state.keys() == tv_state.keys()
  with pytest.raises(ValueError, match="no state dict in this checkpoint"):
    W.unwrap_state_dict({"epoch": 3})
  np.savez(tmp_path / "w.npz", **tv_state)
  loaded = W.load_state_dict(tmp_path / "w.npz")
  assert all(np.array_equal(loaded[k], v) for k, v in tv_state.items())
  with pytest.raises(ValueError, match="unknown checkpoint type"):
    (tmp_path / "w.h5").write_bytes(b"")
    W.load_state_dict(tmp_path / "w.h5")


def test_safetensors_file(tmp_path, tv_state):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in tv_state.items()}, tmp_path / "w.safetensors")
  loaded = W.load_state_dict(tmp_path / "w.safetensors")
  assert loaded.keys() == tv_state.keys()


def _restore(out_dir, name, num_classes=1000):
  from regnet_jax import checkpointing
  abstract = W.abstract_variables(zoo.get_spec(name), num_classes, 3)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
  return checkpointing.restore_params_only(str(out_dir), abstract)


def test_cli_convert_writes_a_restorable_checkpoint(tmp_path, capsys):
  from regnet_jax.weights.__main__ import main
  variables = _random_variables(SMALL)
  np.savez(tmp_path / "pycls.npz", **W.to_torch_state_dict(variables, SMALL, "pycls"))
  out = tmp_path / "converted"
  assert main(["convert", "--source=pycls", f"--model={SMALL}", f"--checkpoint={tmp_path / 'pycls.npz'}",
               f"--out={out}", "--rgb_input"]) == 0
  printed = capsys.readouterr().out
  assert "--config.init_from=" in printed and "--config.eval_resize=256" in printed
  restored = _restore(out, SMALL)
  expected = W.from_torch_state_dict(W.to_torch_state_dict(variables, SMALL, "pycls"), SMALL, "pycls",
                                     rgb_input=True)
  _assert_trees_equal(jax.tree.map(np.asarray, restored), expected)
  from regnet_jax import checkpointing
  with checkpointing.Checkpointer(out) as ckpt:
    _, metadata, step = ckpt.restore(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
        W.abstract_variables(zoo.get_spec(SMALL), 1000, 3)))
  assert step == 0
  assert metadata["converted_weights"]["source"] == "pycls" and metadata["converted_weights"]["rgb_input"]
  assert metadata["eval_preprocessing"]["channel_order"] == "RGB"
  assert metadata["eval_preprocessing_preset"] == "pycls_rgb"


def test_cli_reports_mismatch(tmp_path, capsys):
  from regnet_jax.weights.__main__ import main
  np.savez(tmp_path / "w.npz", **W.to_torch_state_dict(_random_variables(SMALL), SMALL, "timm"))
  assert main(["convert", "--source=timm", "--model=regnety_400mf", f"--checkpoint={tmp_path / 'w.npz'}",
               f"--out={tmp_path / 'out'}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: timm state dict does not match regnety_400mf")
  assert "match zoo model(s) regnety_200mf" in err and "Traceback" not in err
  assert not (tmp_path / "out").exists()
  assert main(["convert", "--source=timm", "--model=regnety_200mf", f"--checkpoint={tmp_path / 'nope.pth'}",
               f"--out={tmp_path / 'out'}"]) == 2
  assert "no checkpoint file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- vs PyTorch

EQUIVALENCE = [  # one X, one Y and one _tv model per source, small enough for CI
    ("torchvision", "regnetx_400mf_tv"),
    ("torchvision", "regnety_400mf"),
    ("torchvision", "regnety_800mf_tv"),
    ("timm", "regnetx_200mf"),
    ("timm", "regnety_200mf"),
    ("timm", "regnetx_400mf_tv"),
    ("timm", "regnety_600mf"),
]


def _torch(source):
  torch = pytest.importorskip("torch")
  pytest.importorskip(source)
  torch.set_num_threads(2)
  from regnet_jax.weights import reference
  return reference


@pytest.mark.parametrize("source,name", EQUIVALENCE)
def test_logits_equal_pytorch(source, name):
  reference = _torch(source)
  model = reference.randomize_(reference.build_torch_model(source, name), seed=0)
  result = reference.compare_logits(model, source, name)
  assert result.max_abs_logit > 1.0  # O(1) logits: the absolute tolerance is meaningful
  assert result.max_abs_diff < TOL, result


def _tv_to_pycls(key):
  """torchvision -> pycls names, written independently of keymaps (pycls anynet.py / blocks.py names)."""
  key = re.sub(r"^stem\.0\.", "stem.conv.", key)
  key = re.sub(r"^stem\.1\.", "stem.bn.", key)
  key = re.sub(r"^trunk_output\.block(\d+)\.block\d+-(\d+)\.", lambda m: f"s{m[1]}.b{int(m[2]) + 1}.", key)
  for tv, pycls in (("f.a.0.", "f.a."), ("f.a.1.", "f.a_bn."), ("f.b.0.", "f.b."), ("f.b.1.", "f.b_bn."),
                    ("f.c.0.", "f.c."), ("f.c.1.", "f.c_bn."), ("proj.0.", "proj."), ("proj.1.", "bn."),
                    ("f.se.fc1.", "f.se.f_ex.0."), ("f.se.fc2.", "f.se.f_ex.2.")):
    key = key.replace(tv, pycls)
  return re.sub(r"^fc\.", "head.fc.", key)


def test_pycls_layout_converts_to_equal_logits(tmp_path):
  reference = _torch("torchvision")
  import torch
  name = "regnety_400mf"  # torchvision's regnet_y_400mf is pycls's RegNetY-400MF
  model = reference.randomize_(reference.build_torch_model("torchvision", name), seed=1)
  pycls_state = {_tv_to_pycls(k): v for k, v in model.state_dict().items()}
  assert {"stem.conv.weight", "s1.b1.proj.weight", "s1.b1.bn.running_var", "s1.b1.f.a.weight",
          "s1.b1.f.se.f_ex.0.bias", "s1.b1.f.se.f_ex.2.weight", "s4.b1.f.c_bn.weight",
          "head.fc.bias"} <= set(pycls_state)
  result = reference.compare_logits(model, "pycls", name, state_dict=pycls_state)
  assert result.max_abs_diff < TOL, result
  # pycls weights are BGR: rgb_input=True on RGB input equals the torch model on BGR input
  result = reference.compare_logits(model, "pycls", name, state_dict=pycls_state, rgb_input=True,
                                    flip_torch_input=True)
  assert result.max_abs_diff < TOL, result
  # a .pyth file as pycls writes it, through the CLI
  torch.save({"epoch": 99, "model_state": pycls_state,
              "optimizer_state": {}, "cfg": "MODEL:\n  TYPE: regnet\n"}, tmp_path / "model.pyth")
  from regnet_jax.weights.__main__ import main
  assert main(["convert", "--source=pycls", f"--model={name}", f"--checkpoint={tmp_path / 'model.pyth'}",
               f"--out={tmp_path / 'out'}"]) == 0
  restored = jax.tree.map(np.asarray, _restore(tmp_path / "out", name))
  _assert_trees_equal(restored, W.from_torch_state_dict(pycls_state, name, "pycls"))


@pytest.mark.slow  # CI runs it (.ci/run: -m slow); the default suite stays near 10 minutes
def test_all_name_map_pairs_have_equal_shapes():
  """Every torchvision / timm model the name maps list fills its zoo model exactly (shapes only; the logits of
  every pair are checked by scripts/check_all_weights.py)."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  timm = pytest.importorskip("timm")
  from unittest import mock
  noop = lambda tensor, *a, **k: tensor  # noqa: E731  # skip weight init: shapes are all we need
  with mock.patch.multiple(torch.nn.init, normal_=noop, ones_=noop, zeros_=noop, uniform_=noop,
                           kaiming_normal_=noop, trunc_normal_=noop):
    for source, table in (("torchvision", names.TORCHVISION), ("timm", names.TIMM)):
      for zoo_name, torch_name in table.items():
        if source == "timm":
          with torch.device("meta"):
            model = timm.create_model(torch_name)
        else:
          model = getattr(torchvision.models, torch_name)()
        got = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        want = {k: v[2] for k, v in W.expected_keys(zoo_name, source).items()}
        assert got == want, (source, zoo_name, set(got) ^ set(want))
        del model
