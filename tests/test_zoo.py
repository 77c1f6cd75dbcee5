"""The zoo reproduces pycls's (and torchvision's) architectures and complexities exactly."""

import json

import pytest

from regnet_jax import zoo
from regnet_jax.complexity import complexity

# Golden numbers from shared/design/regnet-rules.md (pycls).
GOLDEN = {
    "regnetx_3.2gf": ((96, 192, 432, 1008), (2, 6, 15, 2), 3_176_622_952, 15_296_552, 11_367_432),
    "regnetx_200mf": ((24, 56, 152, 368), (1, 1, 4, 7), 199_040_872, 2_684_792, 2_164_056),
    "regnety_200mf": ((24, 56, 152, 368), (1, 1, 4, 7), 199_519_076, 3_162_996, 2_168_052),
}

# pycls MODEL_ZOO.md: flops (B), params (M), acts (M), each rounded to one decimal.
PYCLS_TABLE = {
    "regnetx_200mf": (0.2, 2.7, 2.2), "regnetx_400mf": (0.4, 5.2, 3.1), "regnetx_600mf": (0.6, 6.2, 4.0),
    "regnetx_800mf": (0.8, 7.3, 5.1), "regnetx_1.6gf": (1.6, 9.2, 7.9), "regnetx_3.2gf": (3.2, 15.3, 11.4),
    "regnetx_4.0gf": (4.0, 22.1, 12.2), "regnetx_6.4gf": (6.5, 26.2, 16.4), "regnetx_8.0gf": (8.0, 39.6, 14.1),
    "regnetx_12gf": (12.1, 46.1, 21.4), "regnetx_16gf": (15.9, 54.3, 25.5), "regnetx_32gf": (31.7, 107.8, 36.3),
    "regnety_200mf": (0.2, 3.2, 2.2), "regnety_400mf": (0.4, 4.3, 3.9), "regnety_600mf": (0.6, 6.1, 4.3),
    "regnety_800mf": (0.8, 6.3, 5.2), "regnety_1.6gf": (1.6, 11.2, 8.0), "regnety_3.2gf": (3.2, 19.4, 11.3),
    "regnety_4.0gf": (4.0, 20.6, 12.3), "regnety_6.4gf": (6.4, 30.6, 16.4), "regnety_8.0gf": (8.0, 39.2, 18.0),
    "regnety_12gf": (12.1, 51.8, 21.4), "regnety_16gf": (15.9, 83.6, 23.0), "regnety_32gf": (32.3, 145.0, 30.3),
}

# torchvision's published parameter counts (torchvision.models RegNet weight metadata, num_params).
TORCHVISION_PARAMS = {"regnetx_400mf_tv": 5_495_976, "regnety_800mf_tv": 6_432_512, "regnety_8gf_tv": 39_381_472}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name):
  widths, depths, flops, params, acts = GOLDEN[name]
  spec = zoo.get_spec(name)
  assert spec.widths == widths and spec.depths == depths
  cx = complexity(spec)
  assert (cx.flops, cx.params, cx.acts) == (flops, params, acts)


@pytest.mark.parametrize("name", sorted(PYCLS_TABLE))
def test_pycls_model_zoo_table(name):
  cx = complexity(zoo.get_spec(name))
  flops_b, params_m, acts_m = PYCLS_TABLE[name]
  # Python's round is half-to-even and pycls formatted with "{:.1f}", which rounds the float the same way.
  assert (float(f"{cx.flops / 1e9:.1f}"), float(f"{cx.params / 1e6:.1f}"), float(f"{cx.acts / 1e6:.1f}")) == (
      flops_b, params_m, acts_m)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_variants(name):
  assert complexity(zoo.get_spec(name)).params == TORCHVISION_PARAMS[name]
  base = zoo.get_spec(zoo._TORCHVISION_VARIANTS[name])
  assert zoo.get_spec(name).widths != base.widths  # the rounding really differs for these three


def test_torchvision_rounding_widths():
  assert zoo.get_spec("regnetx_400mf_tv").widths == (32, 64, 160, 400)
  assert zoo.get_spec("regnety_800mf_tv").widths == (64, 144, 320, 784)
  assert zoo.get_spec("regnety_8gf_tv").widths == (224, 448, 896, 2016)


def test_d2l_models():
  x, y = zoo.get_spec("regnetx32"), zoo.get_spec("regnety32")
  assert x.stem_w == 32 and x.depths == (4, 6) and x.widths == (32, 80) and x.group_ws == (16, 16)
  assert x.bot_muls == (1.0, 1.0) and x.se_ratio == 0.0
  assert y.replace(se_ratio=0.0) == x and y.se_ratio == 0.25


def test_zoo_has_every_model():
  sizes = ["200mf", "400mf", "600mf", "800mf", "1.6gf", "3.2gf", "4.0gf", "6.4gf", "8.0gf", "12gf", "16gf", "32gf"]
  expected = {f"regnet{f}_{s}" for f in "xy" for s in sizes}
  expected |= {"regnetx_400mf_tv", "regnety_800mf_tv", "regnety_8gf_tv", "regnetx32", "regnety32"}
  assert set(zoo.model_names()) == expected
  for name in expected:
    if name.startswith("regnety"):
      assert zoo.get_spec(name).se_ratio == 0.25
    else:
      assert zoo.get_spec(name).se_ratio == 0.0


def test_unknown_model_lists_closest():
  with pytest.raises(zoo.UnknownModelError, match=r"unknown model 'regnetx_3.3gf'; closest: regnetx_3.2gf"):
    zoo.get_spec("regnetx_3.3gf")
  assert zoo.get_spec("RegNetX_3.2GF") is zoo.get_spec("regnetx_3.2gf")


def test_zoo_cli_json(capsys):
  assert zoo.main(["--json"]) == 0
  rows = json.loads(capsys.readouterr().out)
  by_name = {r["name"]: r for r in rows}
  assert len(rows) == len(zoo.model_names())
  r = by_name["regnetx_3.2gf"]
  assert r["stage_depths"] == [2, 6, 15, 2] and r["stage_widths"] == [96, 192, 432, 1008]
  assert r["stage_group_widths"] == [48, 48, 48, 48]
  assert (r["flops"], r["params"], r["acts"]) == (3_176_622_952, 15_296_552, 11_367_432)
  assert all(isinstance(r[k], int) for r in rows for k in ("flops", "params", "acts"))


def test_zoo_cli_table(capsys):
  assert zoo.main([]) == 0
  out = capsys.readouterr().out
  assert "regnety_32gf" in out and "32.280" in out and "145.05" in out
