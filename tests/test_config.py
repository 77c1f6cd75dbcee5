"""Configs: the shipped files load, fields validate, bad values are named."""

import importlib.util
import math
import os

import pytest

from regnet_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("name", ["regnetx32", "regnety32", "cifar10", "imagenet"])
def test_shipped_configs_validate(name):
  config_lib.validate(load(name))


def test_regnetx32_is_the_d2l_setting():
  c = load("regnetx32")
  assert (c.model, c.dataset, c.image_size, c.batch_size, c.num_epochs) == ("regnetx32", "fashion_mnist", 96, 128, 10)
  assert load("regnety32").model == "regnety32"


def test_imagenet_paper_recipe():
  c = load("imagenet", "regnetx_3.2gf")
  assert c.model == "regnetx_3.2gf"
  assert (c.momentum, c.nesterov, c.weight_decay, c.num_epochs) == (0.9, True, 5e-5, 100)
  assert (c.warmup_epochs, c.warmup_factor, c.lr_schedule) == (5.0, 0.1, "cosine")
  assert (c.image_size, c.eval_resize, c.augment, c.bn_sync, c.label_smoothing) == (224, 256, "imagenet", False, 0.0)
  assert math.isclose(c.learning_rate, 0.1 * c.batch_size / 128)
  c.batch_size = 256
  assert math.isclose(c.learning_rate, 0.2)  # follows the batch size
  with pytest.raises(KeyError, match="regnetx_3.3gf"):
    config_lib.validate(load("imagenet", "regnetx_3.3gf"))


@pytest.mark.parametrize("field, value, pattern", [
    ("dataset", "mnist", r"config.dataset='mnist'.*fashion_mnist"),
    ("batch_size", 0, r"config.batch_size=0.*>= 1"),
    ("learning_rate", -0.1, r"config.learning_rate=-0.1"),
    ("momentum", 1.5, r"config.momentum=1.5"),
    ("num_train_steps", 0, r"config.num_train_steps=0"),
    ("conv_impl", "fast", r"config.conv_impl='fast'.*xla"),
    ("augment", "mixup", r"config.augment='mixup'"),
    ("warmup_epochs", 20.0, r"config.warmup_epochs=20.0"),
    ("eval_only", True, r"init_from"),
])
def test_bad_values_are_named(field, value, pattern):
  c = load("regnetx32")
  c[field] = value
  with pytest.raises(ValueError, match=pattern):
    config_lib.validate(c)


def test_config_is_typed_and_locked():
  c = load("regnetx32")
  c.lock()
  with pytest.raises(AttributeError):
    c.learning_rat = 0.1
  with pytest.raises(TypeError):
    c.batch_size = "big"


def test_configs_building_on_another_load_it_by_path(tmp_path):
  from regnet_jax import config_files
  c = config_files.load_module(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                            "regnety32.py")).get_config()
  assert c.model == "regnety32" and c.dataset == "fashion_mnist"  # the rest is regnetx32's, loaded as its sibling
  with pytest.raises(FileNotFoundError, match=r"no config file .*nope\.py"):
    config_files.sibling(str(tmp_path / "a.py"), "nope.py")
