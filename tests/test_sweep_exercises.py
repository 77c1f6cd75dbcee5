"""The d2l exercise spaces and sweep configs: VioNet_d/_w/_g/_b break exactly one AnyNetX_E principle each, the
basic-block spaces have no bottleneck or groups, and both configs plan in their base sweep's regime. (One tiny
model of each block type trains in test_sweep_inprocess.)"""

import importlib.util
import os

import pytest

from regnet_jax.sweep import spaces
from regnet_jax.sweep.runner import Shard, plan_trials
from regnet_jax.sweep.sampling import Regime, sample_space

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "sweeps")
REGIME = Regime(flops=(2e6, 4e6), image_size=32, channels=1, num_classes=10)  # the shipped CPU sweep's
N = 30

# Which AnyNetX_E restriction each VioNet breaks, as the words AnyNetSpace.violations uses.
BROKEN = {"VioNet_d": "depths", "VioNet_w": "widths", "VioNet_g": "group widths", "VioNet_b": "bottleneck ratios"}


def _load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_vionet_breaks_exactly_its_principle(name):
  reference = spaces.get_space("AnyNetX_E")
  got = sample_space(spaces.get_space(name), N, REGIME, seed=0)
  assert len(got) == N
  for smp in got:
    assert not spaces.get_space(name).violations(spaces.Candidate(smp.spec))
    broken = reference.violations(spaces.Candidate(smp.spec))
    assert broken and all(v.startswith(BROKEN[name]) for v in broken), (smp.spec, broken)
    d, w = smp.spec.depths, smp.spec.widths
    if name == "VioNet_d":
      assert all(a > b for a, b in zip(d, d[1:]))
    if name == "VioNet_w":
      assert all(a > b for a, b in zip(w, w[1:]))
    if name == "VioNet_g":
      assert len(set(smp.spec.group_ws)) > 1
    if name == "VioNet_b":
      assert len(set(smp.spec.bot_muls)) > 1


@pytest.mark.parametrize("name, base", [("AnyNet_E_basic", "AnyNetX_E"), ("RegNet_basic", "RegNet")])
def test_basic_block_spaces(name, base):
  got = sample_space(spaces.get_space(name), N, REGIME, seed=0)
  for smp in got:
    spec = smp.spec
    assert spec.block_type == "basic" and set(spec.bot_muls) == {1.0} and set(spec.group_ws) == {1}
    assert 2e6 <= smp.flops <= 4e6
    assert not spaces.get_space(name).violations(spaces.Candidate(spec, smp.regnet))
    if name == "AnyNet_E_basic":  # otherwise AnyNetX_E's ordering restrictions hold
      assert all(a <= b for a, b in zip(spec.depths, spec.depths[1:]))
      assert all(a <= b for a, b in zip(spec.widths, spec.widths[1:]))
  # Same regime, same flops: basic blocks (two full 3x3 convs) buy fewer, narrower layers than X blocks.
  x_block = sample_space(spaces.get_space(base), N, REGIME, seed=0)
  assert sum(sum(s.spec.depths) for s in got) < sum(sum(s.spec.depths) for s in x_block)


def test_space_field_errors_say_how_to_fix():
  with pytest.raises(spaces.SpaceError, match=r"no bottleneck, groups or SE; set bottleneck_ratios=\(1,\)"):
    spaces.space_from_dict("x", {"base": "AnyNetX_E", "block_type": "basic"})
  with pytest.raises(spaces.SpaceError, match="block_type='resnext' must be one of"):
    spaces.space_from_dict("x", {"base": "AnyNetX_E", "block_type": "resnext", "bottleneck_ratios": (1,)})
  with pytest.raises(spaces.SpaceError, match="vary_bottleneck=True needs shared_bottleneck=False"):
    spaces.space_from_dict("x", {"base": "AnyNetX_E", "vary_bottleneck": True})
  ok = spaces.space_from_dict("x", {"base": "RegNet", "block_type": "vanilla", "bottleneck_ratios": (1,),
                                    "group_widths": (1,)})
  assert ok.block_type == "vanilla"


@pytest.mark.parametrize("name, want", [
    ("vionet", {"AnyNetX_E", "VioNet_d", "VioNet_w", "VioNet_g", "VioNet_b"}),
    ("deresnextify", {"AnyNetX_E", "AnyNet_E_basic", "RegNet", "RegNet_basic"}),
])
def test_exercise_configs_plan_in_the_base_regime(name, want):
  c = _load_config(name)
  base = _load_config("fashion_mnist_cpu")
  assert c.name == f"{name}@{base.name}" and c.train.to_dict() == base.train.to_dict()
  assert {s: c.spaces[s].n for s in want} == {s: 50 for s in want}
  for s in want:
    c.spaces[s].n = 4  # a prefix of the 50 (sampling is prefix-stable); planning all 50 takes seconds
  trials = plan_trials(c)
  assert {t.sample.space for t in trials} == want and len(trials) == 4 * len(want)
  lo, hi = base.regime.flops
  assert all(lo <= t.sample.flops <= hi for t in trials)
  # the AnyNetX_E reference trains the same models as in any other sweep with this seed and regime
  ref = [t.sample.spec for t in trials if t.sample.space == "AnyNetX_E"]
  assert ref == [s.spec for s in sample_space(spaces.get_space("AnyNetX_E"), len(ref), REGIME, seed=base.seed)]
  two = [[t for t in trials if Shard(i, 2).owns(t.index)] for i in range(2)]
  assert len(two[0]) + len(two[1]) == len(trials)


def test_unknown_base_sweep_is_named():
  with pytest.raises(FileNotFoundError, match="no sweep config.*nope.py.*fashion_mnist_cpu"):
    _load_config("vionet", "nope")


@pytest.mark.parametrize("name, reference", [("vionet", {"AnyNetX_E"}), ("deresnextify", {"AnyNetX_E", "RegNet"})])
def test_exercises_reuse_the_committed_progression_trials_of_their_reference_spaces(name, reference):
  """The exercises in the fmnist_progression regime take their reference spaces' models from the committed run:
  the same seeded streams give the same models, so every planned reference trial the run has finished is found
  (with its recorded error), and no trial of a violating or basic-block space is."""
  import json

  from regnet_jax.sweep.runner import reusable_records
  from regnet_jax.specs_io import spec_to_dict
  run = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "sweeps", "fmnist_progression", "run")
  c = _load_config(name, "fmnist_progression")
  assert c.reuse.sweep == "fmnist_progression"
  for s in c.spaces:
    c.spaces[s].n = 3
  found = reusable_records(c, [run])
  assert found  # the committed run has more than 3 models of every space
  hits = [t.sample.space for t in plan_trials(c)
          if (json.dumps(spec_to_dict(t.sample.spec), sort_keys=True), c.seed) in found]
  assert sorted(hits) == sorted(3 * list(reference))
  c.train.num_train_steps = 2 * c.train.num_train_steps  # another budget: nothing stands for it
  assert reusable_records(c, [run], log=lambda m: None) == {}
