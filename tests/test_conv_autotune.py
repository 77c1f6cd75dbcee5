"""conv_impl="auto" on GPU times grouped convs (regnet_jax/conv_autotune.py); the logic, checked on the CPU."""
import json

import jax
import jax.numpy as jnp
import pytest

from regnet_jax import conv_autotune, convs

SHAPE = conv_autotune.ConvShape(k=3, stride=1, groups=2, cin=16, cout=16, h=8, w=8, batch=2, dtype="float32")


def test_pick_keeps_xla_unless_another_is_at_least_5_percent_faster():
  assert conv_autotune.pick({"xla": 10.0, "split": 9.4, "custom_vjp": 9.9}) == "split"
  assert conv_autotune.pick({"xla": 10.0, "split": 9.6, "custom_vjp": 9.7}) == "xla"   # within the margin
  assert conv_autotune.pick({"xla": 10.0, "split": 12.0, "custom_vjp": 11.0}) == "xla"
  assert conv_autotune.pick({"xla": 10.0, "split": 9.0, "custom_vjp": 8.0}) == "custom_vjp"


def fake_timer(table, calls):
  def timer(impl, shape):
    calls.append((impl, shape.key()))
    return table[impl]
  return timer


def test_tuner_measures_once_per_shape_and_persists(tmp_path):
  path, calls = str(tmp_path / "kind.json"), []
  tuner = conv_autotune.Tuner(path, timer=fake_timer({"xla": 10.0, "split": 5.0, "custom_vjp": 7.0}, calls))
  assert tuner.choose(SHAPE) == "split"
  assert len(calls) == 3
  assert tuner.choose(SHAPE) == "split" and len(calls) == 3            # memory
  saved = json.loads((tmp_path / "kind.json").read_text())
  assert saved[SHAPE.key()] == {"impl": "split", "ms": {"xla": 10.0, "split": 5.0, "custom_vjp": 7.0}}
  again = conv_autotune.Tuner(path, timer=fake_timer({}, calls))
  assert again.choose(SHAPE) == "split" and len(calls) == 3            # the file: no timing
  other = SHAPE.__class__(**{**SHAPE.__dict__, "batch": 64})
  assert other.key() != SHAPE.key()


def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path, capsys):
  path = tmp_path / "kind.json"
  path.write_text("{not json")
  calls = []
  tuner = conv_autotune.Tuner(str(path), timer=fake_timer({"xla": 1.0, "split": 2.0, "custom_vjp": 3.0}, calls))
  assert "ignoring the conv autotune cache" in capsys.readouterr().err
  assert tuner.choose(SHAPE) == "xla" and len(calls) == 3
  assert json.loads(path.read_text())[SHAPE.key()]["impl"] == "xla"
  path.write_text(json.dumps({SHAPE.key(): {"impl": "im2col"}}))        # not a candidate: measured again
  assert conv_autotune.Tuner(str(path), timer=fake_timer({"xla": 1.0, "split": 2.0, "custom_vjp": 3.0},
                                                          calls)).choose(SHAPE) == "xla"
  assert len(calls) == 6


def test_auto_on_gpu_times_grouped_layers_for_real(tmp_path, monkeypatch):
  monkeypatch.setenv("REGNET_JAX_CACHE", str(tmp_path))
  monkeypatch.setattr(conv_autotune, "_TUNERS", {})
  pick = dict(k=3, stride=2, groups=2, cin=16, cout=16, spatial=8, backend="gpu")
  impl = convs.resolve_impl("auto", batch=2, **pick)      # measured on this CPU: the logic, not a GPU figure
  assert impl in conv_autotune.CANDIDATES
  [cache] = (tmp_path / "conv_autotune").iterdir()
  entry = json.loads(cache.read_text())
  [(key, value)] = entry.items()
  assert key.startswith("k3s2g2c16-16hw8x8n2float32") and set(value["ms"]) == set(conv_autotune.CANDIDATES)
  assert all(ms > 0 for ms in value["ms"].values())
  # Without the batch (a bare question), for dense layers, and with timing off: xla, nothing timed.
  assert convs.resolve_impl("auto", **pick) == "xla"
  assert convs.resolve_impl("auto", batch=2, **{**pick, "groups": 1}) == "xla"
  monkeypatch.setenv("REGNET_JAX_CONV_AUTOTUNE", "0")
  assert convs.resolve_impl("auto", batch=4, **pick) == "xla"
  monkeypatch.setenv("REGNET_JAX_CONV_AUTOTUNE", "yes")
  with pytest.raises(ValueError, match="REGNET_JAX_CONV_AUTOTUNE='yes' must be 1 .* or 0"):
    convs.resolve_impl("auto", batch=4, **pick)


def test_timing_runs_inside_a_model_trace():
  # The real use: the tuner runs while a model's step is being traced; its work must not enter that trace.
  seen = []

  def step(x):
    seen.append(conv_autotune.time_candidate("split", SHAPE, repeats=2))
    return x * 2

  assert float(jax.jit(step)(jnp.float32(3))) == 6.0
  assert len(seen) == 1 and seen[0] > 0
