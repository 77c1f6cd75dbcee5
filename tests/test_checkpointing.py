"""Checkpointer: bit-exact sharded round trips, retention, atomicity under kill -9, corrupt-step fallback."""

import functools
import glob
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from regnet_jax import checkpointing
from regnet_jax.checkpointing import (Checkpointer, CheckpointDirectoryError, CorruptCheckpointError,
                                      IncompatibleCheckpointError, restore_params_only, save_variables)

# When a read fails, tensorstore still completes the other pending reads onto orbax's already-closed asyncio
# loop ("RuntimeError: Event loop is closed", unraisable). Harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@flax.struct.dataclass
class TrainState:
  """Shaped like the lead's TrainState: step, params, batch_stats, opt_state, rng."""
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState
  rng: jax.Array


_TX = optax.sgd(0.1, momentum=0.9)


def _init_state(seed=0, width=8):
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {"stem": {"kernel": jax.random.normal(k1, (width, 3))},
            "head": {"kernel": jax.random.normal(k2, (3, 10)), "bias": jnp.zeros(10)}}
  batch_stats = {"stem": {"mean": jnp.full((width,), 0.5), "var": jnp.ones(width)}}
  return TrainState(step=jnp.int32(seed), params=params, batch_stats=batch_stats, opt_state=_TX.init(params),
                    rng=jax.random.key(seed + 100))


@functools.lru_cache
def _sharded_init(mesh, width):
  """A jitted init creating the state directly sharded (first axis over 'data' where it divides), plus the
  abstract state; cached because tests create many states and compiling dominates their run time."""
  n = mesh.shape["data"]

  def sharding_of(leaf):
    split = leaf.ndim >= 1 and leaf.shape[0] % n == 0 and leaf.shape[0] >= n
    return NamedSharding(mesh, P("data") if split else P())

  init_of_seed = functools.partial(_init_state, width=width)
  abstract = jax.eval_shape(init_of_seed, 0)
  shardings = jax.tree.map(sharding_of, abstract)
  init = jax.jit(init_of_seed, out_shardings=shardings)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return init, abstract


def _sharded_state(mesh, seed=0, width=8):
  init, abstract = _sharded_init(mesh, width)
  return init(seed), abstract


def _host_values(tree):
  def to_host(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x)
  return jax.tree.map(to_host, tree)


def _assert_bit_identical(a, b):
  la, lb = jax.tree.leaves(_host_values(a)), jax.tree.leaves(_host_values(b))
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


def _assert_shardings(restored, abstract):
  for r, a in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)):
    assert r.sharding == a.sharding, (r.sharding, a.sharding)


@pytest.fixture
def mesh():
  return jax.make_mesh((1,), ("data",))


def _state_files(directory, step):
  return [f for f in glob.glob(os.path.join(directory, str(step), "state", "**", "*"), recursive=True)
          if os.path.isfile(f) and os.sep + "d" + os.sep in f]


def _save_steps(directory, mesh, steps, **kwargs):
  with Checkpointer(directory, **kwargs) as ckpt:
    for s in steps:
      ckpt.save(s, _sharded_state(mesh, seed=s)[0], metadata={"step": s})


# ------------------------------------------------------------------------------------------- round trips


def test_round_trip_is_bit_identical_with_requested_shardings(tmp_path, mesh):
  state, abstract = _sharded_state(mesh, seed=3)
  metadata = {"config": {"model": "regnetx_32", "lr": 0.1}, "data_position": [3, 128],
              "eval_accuracy": np.float32(0.75), "epoch": jnp.asarray(1.5)}
  with Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.restore(abstract) is None
    ckpt.save(10, state, metadata=metadata)
    ckpt.wait()
    restored, restored_metadata, step = ckpt.restore(abstract)
  assert step == 10
  assert isinstance(restored, TrainState)
  assert jnp.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
  _assert_bit_identical(restored, state)
  _assert_shardings(restored, abstract)
  assert restored_metadata == {"config": {"model": "regnetx_32", "lr": 0.1}, "data_position": [3, 128],
                               "eval_accuracy": 0.75, "epoch": 1.5}


def test_reopened_directory_restores_host_leaves(tmp_path, mesh):
  state = {"w": jax.device_put(jnp.arange(6.0), NamedSharding(mesh, P())), "n": np.arange(4, dtype=np.int64),
           "scalar": 7, "np_scalar": np.float32(2.5)}
  abstract = {"w": jax.ShapeDtypeStruct((6,), jnp.float32, sharding=NamedSharding(mesh, P())),
              "n": np.zeros(4, np.int64), "scalar": 0, "np_scalar": np.float32(0)}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
  restored, metadata, step = Checkpointer(tmp_path).restore(abstract)
  assert (step, metadata) == (1, {})
  np.testing.assert_array_equal(restored["n"], state["n"])
  assert restored["scalar"] == 7 and float(restored["np_scalar"]) == 2.5
  np.testing.assert_array_equal(restored["w"], np.arange(6.0))


def test_four_device_sharded_round_trip_in_subprocess(tmp_path):
  # XLA_FLAGS must be set before jax initialises its backend, hence a fresh interpreter.
  script = textwrap.dedent(f"""
      import jax, numpy as np
      assert jax.device_count() == 4, jax.devices()
      sys_path_test = {os.path.dirname(os.path.abspath(__file__))!r}
      import sys; sys.path.insert(0, sys_path_test)
      import test_checkpointing as t
      mesh = jax.make_mesh((4,), ("data",))
      state, abstract = t._sharded_state(mesh, seed=5, width=8)
      assert state.params["stem"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("data")
      with t.Checkpointer({str(tmp_path)!r}) as ckpt:
        ckpt.save(4, state, metadata={{"devices": 4}})
        ckpt.wait()
        restored, metadata, step = ckpt.restore(abstract)
      assert step == 4 and metadata == {{"devices": 4}}
      t._assert_bit_identical(restored, state)
      t._assert_shardings(restored, abstract)
      kernel = restored.params["stem"]["kernel"]
      assert len(kernel.addressable_shards) == 4 and kernel.addressable_shards[0].data.shape == (2, 3)
      print("OK4")
  """)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and "OK4" in result.stdout, result.stderr[-3000:]


def test_async_save_survives_deleting_the_source_arrays(tmp_path, mesh):
  # The train step donates the state right after save(); save must have copied the arrays off device.
  state, abstract = _sharded_state(mesh, seed=1)
  expected = _host_values(state)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    for leaf in jax.tree.leaves(state):
      leaf.delete()
    restored, _, _ = ckpt.restore(abstract)
  _assert_bit_identical(restored, expected)


# -------------------------------------------------------------------------------------- steps and retention


def test_max_to_keep_and_explicit_step(tmp_path, mesh):
  _save_steps(tmp_path, mesh, [1, 2, 3, 4, 5], max_to_keep=2)
  assert sorted(os.listdir(tmp_path)) == ["4", "5"]
  ckpt = Checkpointer(tmp_path, max_to_keep=2)
  assert ckpt.latest_step() == 5 and ckpt.all_steps() == [4, 5]
  abstract = _sharded_state(mesh)[1]
  state, metadata, step = ckpt.restore(abstract, step=4)
  assert step == 4 and metadata == {"step": 4}
  _assert_bit_identical(state, _sharded_state(mesh, seed=4)[0])
  with pytest.raises(ValueError, match=r"no checkpoint for step 2 .*available steps: \[4, 5\]"):
    ckpt.restore(abstract, step=2)


def test_saving_an_existing_step_keeps_it_unless_forced(tmp_path, mesh):
  abstract = _sharded_state(mesh)[1]
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(7, _sharded_state(mesh, seed=1)[0], metadata={"v": 1})
    ckpt.save(7, _sharded_state(mesh, seed=2)[0], metadata={"v": 2})
    assert ckpt.restore(abstract)[1] == {"v": 1}
    ckpt.save(7, _sharded_state(mesh, seed=2)[0], metadata={"v": 2}, force=True)
    state, metadata, _ = ckpt.restore(abstract)
  assert metadata == {"v": 2}
  _assert_bit_identical(state, _sharded_state(mesh, seed=2)[0])


# ------------------------------------------------------------------------------ corruption and atomicity


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_corrupt_latest_falls_back_with_warning(tmp_path, mesh, caplog, damage):
  _save_steps(tmp_path, mesh, [1, 2, 3])
  files = _state_files(tmp_path, 3)
  assert files
  for f in files:
    if damage == "truncate":
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    else:
      os.remove(f)
  ckpt = Checkpointer(tmp_path)
  with caplog.at_level(logging.WARNING, logger="absl"):
    state, metadata, step = ckpt.restore(_sharded_state(mesh)[1])
  assert step == 2 and metadata == {"step": 2}
  _assert_bit_identical(state, _sharded_state(mesh, seed=2)[0])
  warnings = [r.getMessage() for r in caplog.records if "could not be restored" in r.getMessage()]
  assert len(warnings) == 1 and "step 3" in warnings[0] and str(tmp_path) in warnings[0]
  assert "falling back" in warnings[0]
  # The corrupt step is moved aside: no longer 'latest', and the next save of step 3 works.
  assert ckpt.all_steps() == [1, 2] and os.listdir(tmp_path / "corrupt")[0].startswith("3-")
  ckpt.save(3, _sharded_state(mesh, seed=33)[0])
  ckpt.wait()
  assert ckpt.restore(_sharded_state(mesh)[1])[2] == 3
  ckpt.close()


def test_corrupt_metadata_json_falls_back(tmp_path, mesh, caplog):
  _save_steps(tmp_path, mesh, [1, 2])
  (tmp_path / "2" / "metadata" / "metadata").write_text("{not json")
  with caplog.at_level(logging.WARNING, logger="absl"):
    _, metadata, step = Checkpointer(tmp_path).restore(_sharded_state(mesh)[1])
  assert (step, metadata) == (1, {"step": 1})
  assert any("step 2" in r.getMessage() and "JSONDecodeError" in r.getMessage() for r in caplog.records)


def test_all_corrupt_raises_naming_directory_and_fix(tmp_path, mesh):
  _save_steps(tmp_path, mesh, [1, 2])
  for step in (1, 2):
    for f in _state_files(tmp_path, step):
      os.remove(f)
  with pytest.raises(CorruptCheckpointError) as info:
    Checkpointer(tmp_path).restore(_sharded_state(mesh)[1])
  message = str(info.value)
  assert str(tmp_path) in message and "step 2:" in message and "step 1:" in message
  assert "--workdir" in message


def test_incomplete_tmp_dir_is_ignored(tmp_path, mesh):
  _save_steps(tmp_path, mesh, [1])
  partial = tmp_path / "2.orbax-checkpoint-tmp" / "state"
  partial.mkdir(parents=True)
  (partial / "manifest.ocdbt").write_bytes(b"\x00" * 10)
  ckpt = Checkpointer(tmp_path)
  assert ckpt.latest_step() == 1
  assert ckpt.restore(_sharded_state(mesh)[1])[2] == 1
  ckpt.close()


def test_save_killed_by_sigkill_leaves_previous_checkpoint(tmp_path):
  # A child saves step 1, then starts step 2 with the final rename held back (so it is deterministically
  # mid-save) and dies by SIGKILL. The step-2 data is on disk under the tmp name; restore must ignore it.
  script = textwrap.dedent(f"""
      import asyncio, os, signal, time
      import jax.numpy as jnp
      from orbax.checkpoint._src.path import atomicity
      from regnet_jax.checkpointing import Checkpointer
      ckpt = Checkpointer({str(tmp_path)!r})
      ckpt.save(1, {{"w": jnp.arange(1000.0)}}, metadata={{"step": 1}})
      ckpt.wait()
      async def never_finalize(self):
        await asyncio.sleep(3600)
      atomicity.AtomicRenameTemporaryPath.finalize = never_finalize
      ckpt.save(2, {{"w": jnp.arange(1000.0) + 1}}, metadata={{"step": 2}})
      time.sleep(1.0)  # let the background thread write the array files
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == -9, result.stderr[-3000:]
  tmp_dir = tmp_path / "2.orbax-checkpoint-tmp"
  assert glob.glob(str(tmp_dir / "state*" / "d" / "*")), "the killed save should have written array data"
  assert not (tmp_path / "2").exists()
  mesh = jax.make_mesh((1,), ("data",))
  abstract = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32, sharding=NamedSharding(mesh, P()))}
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 1
    state, metadata, step = ckpt.restore(abstract)
  assert (step, metadata) == (1, {"step": 1})
  np.testing.assert_array_equal(state["w"], np.arange(1000.0))


# ------------------------------------------------------------------------------------------------ errors


def test_unwritable_directory_names_path(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(CheckpointDirectoryError, match=r"a_file/ckpt.*--workdir"):
    Checkpointer(blocker / "ckpt")


def test_incompatible_checkpoint_says_different_model(tmp_path, mesh):
  _save_steps(tmp_path, mesh, [1])
  _, wider = _sharded_state(mesh, width=16)
  with pytest.raises(IncompatibleCheckpointError) as info:
    Checkpointer(tmp_path).restore(wider)
  message = str(info.value)
  assert f"checkpoint at {tmp_path}/1 was written for a different model/config" in message
  assert "params/stem/kernel: checkpoint has shape (8, 3), expected (16, 3)" in message
  assert "new --workdir" in message


def test_unsharded_abstract_leaf_is_rejected(tmp_path, mesh):
  _save_steps(tmp_path, mesh, [1])
  abstract = jax.eval_shape(_init_state)
  with pytest.raises(ValueError, match=r"need a \.sharding"):
    Checkpointer(tmp_path).restore(abstract)


def test_metadata_must_be_json(tmp_path):
  with Checkpointer(tmp_path) as ckpt, pytest.raises(TypeError, match="not JSON serializable"):
    ckpt.save(1, {"w": np.ones(2)}, metadata={"bad": object()})


# ------------------------------------------------------------------------------- params-only (fine-tuning)


def _abstract_variables(abstract_state, with_head=True):
  params = dict(abstract_state.params)
  if not with_head:
    params.pop("head")
  return {"params": params, "batch_stats": abstract_state.batch_stats}


def test_restore_params_only_from_training_checkpoints(tmp_path, mesh):
  _save_steps(tmp_path, mesh, [1, 2])
  _, abstract = _sharded_state(mesh)
  variables = restore_params_only(tmp_path, _abstract_variables(abstract))
  expected = _sharded_state(mesh, seed=2)[0]
  _assert_bit_identical(variables, {"params": expected.params, "batch_stats": expected.batch_stats})
  _assert_shardings(variables, _abstract_variables(abstract))

  # Fine-tuning to a new head: leave it out of the abstract tree.
  headless = restore_params_only(tmp_path, _abstract_variables(abstract, with_head=False))
  assert set(headless["params"]) == {"stem"}
  # A head of the wrong size is reported with the fix.
  wrong = _abstract_variables(abstract)
  wrong["params"] = {**wrong["params"], "head": {**wrong["params"]["head"],
                                                 "bias": jax.ShapeDtypeStruct((5,), jnp.float32,
                                                                              sharding=NamedSharding(mesh, P()))}}
  with pytest.raises(IncompatibleCheckpointError, match=r"params/head/bias.*\(10,\), expected \(5,\)(.|\n)*drop"):
    restore_params_only(tmp_path, wrong)


def test_save_variables_round_trip(tmp_path, mesh):
  state, abstract = _sharded_state(mesh, seed=9)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  save_variables(tmp_path / "converted", variables, metadata={"source": "pycls", "model": "regnetx_032"})
  assert os.listdir(tmp_path / "converted") == ["0"]
  restored = restore_params_only(tmp_path / "converted", _abstract_variables(abstract))
  _assert_bit_identical(restored, variables)
  # Overwriting converted weights is allowed; writing into a training directory is not.
  save_variables(tmp_path / "converted", variables, metadata={})
  _save_steps(tmp_path / "train", mesh, [5])
  with pytest.raises(ValueError, match="already holds training checkpoints"):
    save_variables(tmp_path / "train", variables, metadata={})


def test_restore_params_only_errors(tmp_path, mesh):
  abstract = _abstract_variables(_sharded_state(mesh)[1])
  with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
    restore_params_only(tmp_path / "missing", abstract)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    restore_params_only(tmp_path / "empty", abstract)


def test_module_is_the_only_orbax_user():
  # A guard for the architecture rule; cheap and catches an accidental `import orbax` elsewhere.
  package = os.path.dirname(checkpointing.__file__)
  imports_orbax = re.compile(r"^\s*(import|from)\s+orbax", re.MULTILINE)
  offenders = [p for p in glob.glob(os.path.join(package, "**", "*.py"), recursive=True)
               if imports_orbax.search(open(p).read()) and not p.endswith("checkpointing.py")]
  assert not offenders


# ------------------------------------------------------------------------------------------ multi-process

_TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process_id, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    import jax.numpy as jnp
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P
    from regnet_jax.checkpointing import Checkpointer

    mesh = jax.make_mesh((2,), ("data",))
    shardings = {"w": NamedSharding(mesh, P("data")), "step": NamedSharding(mesh, P())}
    abstract = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=shardings["w"]),
                "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=shardings["step"])}
    make = jax.jit(lambda s: {"w": jnp.arange(8.0).reshape(4, 2) + s, "step": s}, out_shardings=shardings)
    ckpt = Checkpointer(directory)
    for s in (1, 2):
      ckpt.save(s, make(s), metadata={"s": s})
    state, metadata, step = ckpt.restore(abstract)
    assert step == 2 and metadata == {"s": 2} and len(state["w"].addressable_shards) == 1
    full = multihost_utils.process_allgather(state["w"], tiled=True)
    assert (full == jnp.arange(8.0).reshape(4, 2) + 2).all(), full
    if process_id == 1:  # step 2 unreadable on this process only: both must fall back together
      original = Checkpointer._stored_shapes
      def failing(self, s):
        if s == 2:
          raise OSError("simulated read failure")
        return original(self, s)
      Checkpointer._stored_shapes = failing
    state, metadata, step = ckpt.restore(abstract)
    assert step == 1 and metadata == {"s": 1}, (step, metadata)
    assert ckpt.all_steps() == [1]
    ckpt.close()
    print("OK", process_id)
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_save_restore_and_agree_on_fallback(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  env.pop("XLA_FLAGS", None)
  port = str(_free_port())
  children = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_SCRIPT, str(i), port, str(tmp_path / "ckpt")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(2)]
  try:
    outputs = [child.communicate(timeout=120) for child in children]
  finally:
    for child in children:
      if child.poll() is None:
        child.kill()
  for i, (child, (out, err)) in enumerate(zip(children, outputs)):
    assert child.returncode == 0 and f"OK {i}" in out, err[-3000:]
