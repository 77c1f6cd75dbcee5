"""Design spaces and sampling: paper constraints on 1000 samples, regimes, determinism, no duplicates."""

import math

import numpy as np
import pytest

from regnet_jax.regnet import generate_regnet, regnet_to_anynet
from regnet_jax.specs import SpecError
from regnet_jax.sweep import rand, spaces
from regnet_jax.sweep.sampling import Regime, RegimeError, sample_space
from regnet_jax.specs_io import spec_from_dict, spec_from_json, spec_to_dict, spec_to_json

N = 1000
ANYNET_SPACES = ("AnyNetX_A", "AnyNetX_B", "AnyNetX_C", "AnyNetX_D", "AnyNetX_E", "VioNet")


@pytest.fixture(scope="module")
def samples():
  return {name: sample_space(spaces.get_space(name), N, seed=0) for name in spaces.space_names()}


def _check_paper_anynet(spec):
  """The paper's AnyNetX ranges, checked directly (not through the space's own `violations`)."""
  assert len(spec.stages) == 4
  for s in spec.stages:
    assert 1 <= s.depth <= 16
    assert 8 <= s.width <= 1024 and s.width % 8 == 0
    assert s.bot_mul in (1.0, 0.5, 0.25)
    assert s.group_w in (1, 2, 4, 8, 16, 32) or s.group_w == s.bottleneck_width < 32  # clipped like pycls
    assert s.bottleneck_width % s.group_w == 0
    assert s.stride == 2


@pytest.mark.parametrize("name", ANYNET_SPACES)
def test_anynet_space_constraints_hold_on_1000_samples(samples, name):
  got = samples[name]
  assert len(got) == N
  for smp in got:
    spec = smp.spec
    _check_paper_anynet(spec)
    d, w = spec.depths, spec.widths
    if name != "AnyNetX_A":
      assert len(set(spec.bot_muls)) == 1, spec
    if name not in ("AnyNetX_A", "AnyNetX_B"):
      assert len(set(spec.group_ws)) == 1, spec
    if name in ("AnyNetX_D", "AnyNetX_E"):
      assert all(a <= b for a, b in zip(w, w[1:])), spec
    if name == "AnyNetX_E":
      assert all(a <= b for a, b in zip(d, d[1:])), spec
    if name == "VioNet":
      assert all(a > b for a, b in zip(w, w[1:])) and all(a > b for a, b in zip(d, d[1:])), spec
    assert not spaces.get_space(name).violations(spaces.Candidate(spec))


@pytest.mark.parametrize("name", ("RegNet", "RegNetX"))
def test_regnet_space_constraints_hold_on_1000_samples(samples, name):
  space = spaces.get_space(name)
  for smp in samples[name]:
    p = smp.regnet
    assert space.depth_range[0] <= p.depth <= space.depth_range[1] and p.depth < 64
    assert 8 <= p.w0 < 256 and p.w0 % 8 == 0
    assert 0 < p.wa < 256
    assert 1.5 <= p.wm <= 3.0
    assert 1 / p.bot_mul in (1, 2, 4) and p.group_w in (1, 2, 4, 8, 16, 32)
    gen = generate_regnet(p.wa, p.w0, p.wm, p.depth)
    assert gen.num_stages == gen.total_stages == 4
    assert regnet_to_anynet(p) == smp.spec
    if name == "RegNetX":
      assert p.bot_mul == 1.0 and 12 <= p.depth <= 28 and p.wm >= 2.0


def test_anynet_sampling_is_log_uniform(samples):
  depths = np.array([s.depth for smp in samples["AnyNetX_A"] for s in smp.spec.stages])
  # log-uniform on (0.5, 16] ceiled: P(d = 1) = log(2) / log(32) = 0.2
  assert abs(np.mean(depths == 1) - 0.2) < 0.03
  rng = np.random.default_rng(0)
  draws = np.array([rand.log_uniform(rng, 8, 1024, 8) for _ in range(4000)])
  assert draws.min() >= 8 and draws.max() <= 1024 and np.all(draws % 8 == 0)
  # pycls: f log-uniform on (8 - 4, 1024], then ceiled to a multiple of 8, so P(w <= 88) = P(f <= 88)
  assert abs(np.mean(draws <= 88) - math.log(88 / 4) / math.log(1024 / 4)) < 0.03


def test_no_duplicates(samples):
  for name, got in samples.items():
    assert len({s.spec for s in got}) == len(got), name


def test_same_seed_same_samples_and_prefix_property():
  space = spaces.get_space("AnyNetX_C")
  a = sample_space(space, 30, seed=7)
  assert a == sample_space(space, 30, seed=7)
  assert a[:10] == sample_space(space, 10, seed=7)
  assert [s.spec for s in a] != [s.spec for s in sample_space(space, 30, seed=8)]


def test_regime_bounds_respected():
  regime = Regime(flops=(2e6, 4e6), params=(1e5, 2e6), acts=(1e4, 2e5), image_size=32, channels=1, num_classes=10)
  for name in ("AnyNetX_A", "AnyNetX_E", "RegNet"):
    for smp in sample_space(spaces.get_space(name), 40, regime, seed=3):
      cx = regime.measure(smp.spec)
      assert (cx.flops, cx.params, cx.acts) == (smp.flops, smp.params, smp.acts)
      assert 2e6 <= cx.flops <= 4e6 and 1e5 <= cx.params <= 2e6 and 1e4 <= cx.acts <= 2e5


def test_impossible_regime_names_the_space_and_the_fix():
  with pytest.raises(RegimeError, match="AnyNetX_E.*widen the bounds"):
    sample_space(spaces.get_space("AnyNetX_E"), 3, Regime(flops=(1, 2)), max_draws=200)


def test_custom_spaces_from_config():
  s = spaces.space_from_dict("narrow_E", {"n": 5, "base": "AnyNetX_E", "width_range": [8, 128]})
  assert s.name == "narrow_E" and s.width_range == (8, 128) and s.depth_order == "nondecreasing"
  assert all(max(x.spec.widths) <= 128 for x in sample_space(s, 50))
  r = spaces.space_from_dict("shallow_regnet", {"kind": "regnet", "depth_range": (4, 12), "num_stages_range": (2, 4)})
  assert all(sum(x.spec.depths) <= 12 for x in sample_space(r, 50))
  assert spaces.space_from_dict("RegNet", {"n": 3}) == spaces.get_space("RegNet")
  with pytest.raises(spaces.SpaceError, match="unknown field.*width_rnge"):
    spaces.space_from_dict("bad", {"base": "AnyNetX_A", "width_rnge": (8, 64)})
  with pytest.raises(spaces.SpaceError, match="closest: AnyNetX_E"):
    spaces.get_space("AnyNetX_F")
  with pytest.raises(spaces.SpaceError, match="width_range"):
    spaces.AnyNetSpace("bad", width_range=(8, 100))


def test_spec_json_round_trip(samples):
  for smp in samples["AnyNetX_A"][:50] + samples["RegNet"][:50]:
    assert spec_from_json(spec_to_json(smp.spec)) == smp.spec
    assert spec_from_dict(spec_to_dict(smp.spec)) == smp.spec
  with pytest.raises(SpecError, match="unknown key"):
    spec_from_dict({"depths": [1], "widths": [8], "colour": "red"})
  with pytest.raises(SpecError, match="not JSON"):
    spec_from_json("{depths")


def test_sample_dict_has_the_cli_fields(samples):
  d = samples["RegNet"][0].to_dict()
  assert {"space", "depths", "widths", "bot_muls", "group_widths", "flops", "params", "acts", "regnet"} <= set(d)
  assert set(d["regnet"]) == {"depth", "w0", "wa", "wm", "bot_mul", "group_w"}
  assert "regnet" not in samples["AnyNetX_A"][0].to_dict()
