"""Eval-only ImageNet scoring of converted weights, per weight source's preprocessing, on mock imagenet2012."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from regnet_jax import anynet, checkpointing, config as config_lib, train, weights, zoo
from regnet_jax.data import host_transforms, preprocess
from regnet_jax import data as data_lib

MODEL = "regnetx_200mf"
NUM = 5


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """Random variables -> torchvision state dict -> converter -> a weights directory (what `convert` writes)."""
  spec = zoo.get_spec(MODEL)
  model = anynet.build_model(spec, conv_impl="xla")
  variables = model.init(jax.random.key(3), jnp.zeros((1, 64, 64, 3)))
  # Random BN statistics, so eval mode really uses them.
  rng = np.random.default_rng(0)
  variables = {"params": variables["params"],
               "batch_stats": jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32),
                                           variables["batch_stats"])}
  state_dict = weights.to_torch_state_dict(jax.device_get(variables), MODEL, "torchvision")
  out = tmp_path_factory.mktemp("weights") / "w"
  checkpointing.save_variables(str(out), weights.from_torch_state_dict(state_dict, MODEL, "torchvision"),
                               metadata={"source": "torchvision"})
  return str(out), variables


def _expected_accuracy(variables, preset, data_dir):
  """Host resize + centre crop, normalise, channel order, model: computed here without the training code."""
  source = data_lib.open_source("imagenet2012", "eval", data_dir=data_dir,
                                transform=host_transforms.ResizeCenterCrop(preset.crop_size, preset.resize_size))
  batch = source.batch(np.arange(source.num_examples))
  info = data_lib.dataset_info("imagenet2012", data_dir)
  x = preprocess.eval_preprocess(jnp.asarray(batch["image"]), info=info, image_size=preset.crop_size)
  if preset.channel_order == "BGR":
    x = x[..., ::-1]
  logits = anynet.build_model(zoo.get_spec(MODEL), conv_impl="xla").apply(variables, x, train=False)
  return float(np.mean(np.argmax(np.asarray(logits), -1) == batch["label"])), np.asarray(logits)


@pytest.mark.parametrize("preset_name", ["pycls", "torchvision_v1", "torchvision_v2"])
def test_eval_only_per_weight_source(tmp_path, converted, preset_name):
  weights_dir, variables = converted
  preset = weights.preset(preset_name)
  assert (preset.resize_size, preset.crop_size) == {"pycls": (256, 224), "torchvision_v1": (256, 224),
                                                    "torchvision_v2": (232, 224)}[preset_name]
  assert preset.channel_order == ("BGR" if preset_name == "pycls" else "RGB")
  with tfds.testing.mock_data(num_examples=NUM):
    c = config_lib.base_config()
    c.update(dict(model=MODEL, dataset="imagenet2012", data_dir=str(tmp_path / "tfds"), batch_size=4,
                  eval_only=True, init_from=weights_dir, progress_bar=False, conv_impl="xla",
                  **preset.config_overrides()))
    result = train.train_and_evaluate(c, str(tmp_path / "run"))
    expected, logits = _expected_accuracy(variables, preset, c.data_dir)
  assert result["eval_count"] == NUM
  assert result["eval_accuracy"] == pytest.approx(expected, abs=1e-9)
  # The loss pins the logits themselves (accuracy alone can hide a wrong channel order on 5 images).
  labels = None
  with tfds.testing.mock_data(num_examples=NUM):
    labels = data_lib.open_source("imagenet2012", "eval", data_dir=c.data_dir,
                                  transform=host_transforms.ResizeCenterCrop(224, 256)).batch(np.arange(NUM))["label"]
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  expected_loss = float(np.mean(lse - logits[np.arange(NUM), labels]))
  assert result["eval_loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_eval_only_needs_init_from():
  c = config_lib.base_config()
  c.eval_only = True
  with pytest.raises(ValueError, match="init_from"):
    config_lib.validate(c)
