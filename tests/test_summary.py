"""The summary CLI: d2l shapes from the real model, real and analytic counts."""

import json
import subprocess
import sys

from regnet_jax import summary


def test_d2l_regnetx32_summary():
  s = summary.summarize("regnetx32", image_size=96, channels=1, num_classes=10)
  assert s["shapes"] == [["stem", [48, 48, 32]], ["s1", [24, 24, 32]], ["s2", [12, 12, 80]], ["head", [10]]]
  assert s["param_count"] == s["params"] == 177_322
  assert s["flops"] == 40_293_162


def test_summary_cli_json():
  out = subprocess.run([sys.executable, "-m", "regnet_jax.summary", "regnety_200mf", "--json"], capture_output=True,
                       text=True, check=True).stdout
  s = json.loads(out)
  assert s["name"] == "regnety_200mf"
  assert s["shapes"][-2:] == [["s4", [7, 7, 368]], ["head", [1000]]]
  assert (s["flops"], s["params"], s["acts"]) == (199_519_076, 3_162_996, 2_168_052)
  assert s["param_count"] == 3_162_996


def test_summary_cli_text_and_errors(capsys):
  assert summary.main(["regnetx32", "--image-size=96", "--channels=1", "--num-classes=10"]) == 0
  out = capsys.readouterr().out
  assert "stem     (48, 48, 32)" in out and "s2       (12, 12, 80)" in out and "177,322" in out
  assert summary.main(["regnetx_3.3gf"]) == 2
  assert "closest: regnetx_3.2gf" in capsys.readouterr().err
  assert summary.main(["regnetx32", "--image-size=0"]) == 2
  assert "image_size=0" in capsys.readouterr().err
