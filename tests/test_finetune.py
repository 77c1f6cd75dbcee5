"""Fine-tuning: init_from into another number of classes (head re-initialised, the rest loaded and strict),
trainable=head (a linear probe), bn_frozen, the workdir's class list, and bad input failing before any write."""

import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from regnet_jax import checkpointing, optim, steps, train
from regnet_jax import config as config_lib
from regnet_jax.data import export, fashion_mnist
from _subprocess_env import main_subprocess_env  # pytest puts tests/ on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_SPLIT = 48


def small_config(**overrides):
  c = config_lib.base_config()
  c.update(dict(model="regnetx32", image_size=32, batch_size=16, eval_batch_size=16, num_train_steps=3,
                learning_rate=0.05, log_every_steps=1, checkpoint_every_steps=100, progress_bar=False,
                conv_impl="xla"))
  c.update(overrides)
  return c


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """Two image folders of real Fashion-MNIST images: classes 0-2 and classes 5-8."""
  if fashion_mnist.find_idx_dir(None) is None:
    pytest.skip("needs the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
  base = tmp_path_factory.mktemp("folders")
  export.export("fashion_mnist", str(base / "a"), classes=[0, 1, 2], limit=PER_SPLIT)
  export.export("fashion_mnist", str(base / "b"), classes=[5, 6, 7, 8], limit=PER_SPLIT)
  return str(base / "a"), str(base / "b")


@pytest.fixture(scope="module")
def pretrained(folders, tmp_path_factory):
  """A 3-class run on folder a: the checkpoint that fine-tuning starts from."""
  workdir = str(tmp_path_factory.mktemp("pretrained") / "run")
  train.train_and_evaluate(small_config(dataset=f"folder:{folders[0]}"), workdir)
  return workdir


def _state(workdir, config):
  spec = train.resolve_dataset(config)
  info = train.dataset_info(config, spec)
  model = train.build_model(config, info)
  mesh = jax.make_mesh((1,), ("data",))
  tx = optim.make_optimizer(config, 8)
  abstract = steps.abstract_train_state(jax.random.key(config.seed), mesh, model=model, tx=tx, info=info,
                                        image_size=config.image_size)
  state, _, _ = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).restore(abstract)
  return jax.device_get(state)


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _split_head(params):
  flat = _flat(params)
  head = {k: v for k, v in flat.items() if k.startswith("['head']['fc']")}
  return head, {k: v for k, v in flat.items() if k not in head}


def _finetune(folders, pretrained, tmp_path, **overrides):
  c = small_config(dataset=f"folder:{folders[1]}", init_from=pretrained, **overrides)
  workdir = str(tmp_path / "finetune")
  result = train.train_and_evaluate(c, workdir)
  return c, workdir, result


def test_linear_probe_reinitialises_the_head_and_trains_only_it(folders, pretrained, tmp_path, caplog):
  source = _state(pretrained, small_config(dataset=f"folder:{folders[0]}"))
  with caplog.at_level(logging.INFO, logger="absl"):
    c, workdir, result = _finetune(folders, pretrained, tmp_path, trainable="head")
  assert re.search(r"the classifier was re-initialised for 4 classes \(params/head/fc/bias: checkpoint \(3,\), "
                   r"model \(4,\); params/head/fc/kernel: checkpoint \(\d+, 3\), model \(\d+, 4\)\); every other "
                   r"tensor was loaded", caplog.text), caplog.text
  assert "linear probe (trainable=head)" in caplog.text
  tuned = _state(workdir, c)
  head, backbone = _split_head(tuned.params)
  _, source_backbone = _split_head(source.params)
  assert backbone.keys() == source_backbone.keys()
  for k in backbone:  # the backbone is exactly the checkpoint's: not updated, not decayed
    np.testing.assert_array_equal(backbone[k], source_backbone[k], err_msg=k)
  for k, v in _flat(tuned.batch_stats).items():  # and its BN statistics are frozen
    np.testing.assert_array_equal(v, _flat(source.batch_stats)[k], err_msg=k)
  assert head["['head']['fc']['kernel']"].shape[-1] == 4 and np.any(head["['head']['fc']['bias']"] != 0)
  assert result["step"] == 3 and result["eval_count"] == PER_SPLIT


def test_full_finetune_with_frozen_bn_updates_weights_not_statistics(folders, pretrained, tmp_path):
  source = _state(pretrained, small_config(dataset=f"folder:{folders[0]}"))
  c, workdir, _ = _finetune(folders, pretrained, tmp_path, bn_frozen=True)
  tuned = _state(workdir, c)
  _, backbone = _split_head(tuned.params)
  _, source_backbone = _split_head(source.params)
  assert any(not np.array_equal(backbone[k], source_backbone[k]) for k in backbone)
  for k, v in _flat(tuned.batch_stats).items():
    np.testing.assert_array_equal(v, _flat(source.batch_stats)[k], err_msg=k)


def test_same_classes_loads_the_head_too(folders, pretrained, tmp_path):
  config = small_config(dataset=f"folder:{folders[0]}", init_from=pretrained, num_train_steps=1,
                        learning_rate=1e-9, weight_decay=0.0, bn_frozen=True)
  train.train_and_evaluate(config, str(tmp_path / "again"))
  head, _ = _split_head(_state(str(tmp_path / "again"), config).params)
  source, _ = _split_head(_state(pretrained, small_config(dataset=f"folder:{folders[0]}")).params)
  for k in head:  # the trained head, moved by one 1e-9 step at most
    np.testing.assert_allclose(head[k], source[k], atol=1e-7, err_msg=k)
  assert np.any(source["['head']['fc']['bias']"] != 0)


def _listing(path):
  return sorted((os.path.relpath(os.path.join(r, f), path), os.path.getmtime(os.path.join(r, f)))
                for r, _, fs in os.walk(path) for f in fs)


def test_resume_on_other_classes_fails_before_anything_is_written(folders, pretrained):
  before = _listing(pretrained)
  with pytest.raises(ValueError, match=r"was started on folder:\S+ with 3 classes; folder:\S+ has 4 .*new --workdir"):
    train.train_and_evaluate(small_config(dataset=f"folder:{folders[1]}"), pretrained)
  assert _listing(pretrained) == before


@pytest.mark.parametrize("overrides, error, message", [
    # Another model: every tensor that does not fit is named, and the head is not blamed.
    (dict(model="regnety32"), checkpointing.IncompatibleCheckpointError,
     r"(?s)differences.*params/s1_b\d/se/.*missing from the checkpoint.*must hold weights of the same model"),
    # Evaluating needs the trained head: no silent re-initialisation.
    (dict(eval_only=True), checkpointing.IncompatibleCheckpointError, r"params/head/fc/kernel: checkpoint has shape"),
    (dict(mean=(1.0, 2.0, 3.0), std=(1.0, 1.0, 1.0)), ValueError, r"give 3 values, but folder:\S+ has 1-channel"),
    (dict(trainable="backbone"), ValueError, r"config.trainable='backbone' is invalid: one of all, head"),
    (dict(augment="imagenet"), ValueError, r"adds ImageNet's RGB PCA lighting, but folder:\S+ has 1-channel"),
], ids=["other_model", "eval_only_other_head", "mean_per_channel", "trainable", "lighting_on_grey"])
def test_bad_finetune_input_fails_before_writing(folders, pretrained, tmp_path, overrides, error, message):
  workdir = str(tmp_path / "run")
  with pytest.raises(error, match=message):
    train.train_and_evaluate(small_config(dataset=f"folder:{folders[1]}", init_from=pretrained, **overrides),
                             workdir)
  assert not os.path.exists(workdir)


# ---------------------------------------------------------------------- through the command line, exit codes


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return main_subprocess_env(tmp_path_factory.getbasetemp() / "jax_cache",
                             XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _main(workdir, env, **overrides):
  flags = [f"--config.{k}={v}" for k, v in {**dict(image_size=32, batch_size=16, num_train_steps=2,
                                                    progress_bar=False), **overrides}.items()]
  cmd = [sys.executable, "-m", "regnet_jax.main", "--config=configs/regnetx32.py", f"--workdir={workdir}", *flags]
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_bad_image_and_misfit_init_from_exit_2_before_writing(folders, pretrained, tmp_path, env):
  root = str(tmp_path / "broken")
  shutil.copytree(folders[1], root)
  bad = os.path.join(root, "train", "sandal", sorted(os.listdir(os.path.join(root, "train", "sandal")))[3])
  with open(bad, "wb") as f:
    f.write(b"\x89PNG but not really")
  r = _main(str(tmp_path / "w1"), env, dataset=f"folder:{root}")
  assert r.returncode == 2, r.stderr[-3000:]
  assert f"error: 1 of {PER_SPLIT} files in {root}/train are not decodable images:\n  {bad}: " in r.stderr
  assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "w1")
  # 1-channel weights into 3-channel data: the stem does not fit, and the message says which tensors.
  r = _main(str(tmp_path / "w2"), env, dataset=f"folder:{folders[1]}", channels=3, init_from=pretrained)
  assert r.returncode == 2, r.stderr[-3000:]
  assert re.search(r"error: the checkpoint at \S+ was written for a different model/config .*\n  params/stem/conv/"
                   r"kernel: checkpoint has shape \(3, 3, 1, \d+\), expected \(3, 3, 3, \d+\)", r.stderr), r.stderr
  assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "w2")
