"""EDFs, complexity-normalised weights, bootstrap and trends against hand-computed cases; the RegNet linear fit."""

import numpy as np
import pytest

from regnet_jax import zoo
from regnet_jax.regnet import generate_regnet
from regnet_jax.specs import AnyNetSpec
from regnet_jax.sweep import stats
from regnet_jax.sweep.linear_fit import block_widths, fit_errors, fit_regnet


def test_edf_counts_strictly_smaller_errors():
  errors = [3.0, 1.0, 2.0, 2.0]
  at = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]
  np.testing.assert_allclose(stats.edf(errors, at), [0, 0, 0.25, 0.25, 0.75, 0.75, 1.0])
  np.testing.assert_allclose(stats.edf(errors, [2.5], weights=[0.1, 0.2, 0.3, 0.4]), [0.9])
  x, y = stats.edf_steps(errors)
  np.testing.assert_allclose(x, [1, 2, 2, 3])
  np.testing.assert_allclose(y, [0.25, 0.5, 0.75, 1.0])
  with pytest.raises(ValueError, match="summing to 1"):
    stats.edf(errors, at, weights=[1, 1, 1, 1])


def test_normalized_weights_make_complexity_uniform_over_bins():
  edges = stats.complexity_bin_edges([1.0, 10.0], 2)  # log bins [1, sqrt(10)), [sqrt(10), 10]
  np.testing.assert_allclose(edges, [1, np.sqrt(10), 10])
  w = stats.normalized_weights([1.0, 1.0, 2.0, 10.0], edges)
  np.testing.assert_allclose(w, [1 / 6, 1 / 6, 1 / 6, 1 / 2])
  # three occupied bins of four: each occupied bin weighs 1/3
  edges = stats.complexity_bin_edges([1.0, 16.0], 4)
  w = stats.normalized_weights([1.0, 1.5, 3.0, 3.1, 3.2, 16.0], edges)
  np.testing.assert_allclose(w, [1 / 6, 1 / 6, 1 / 9, 1 / 9, 1 / 9, 1 / 3])
  assert np.isclose(w.sum(), 1.0)


def test_bootstrap_of_the_best_error_matches_hand_computed_cases():
  # [1, 2]: a resample's min is 2 only if both draws are 2 (p = 1/4), so the 50th percentile is 1 and the 97.5th is 2
  ci = stats.bootstrap_min([1.0, 2.0], num_resamples=10_000, seed=0)
  assert (ci.low, ci.median, ci.high) == (1.0, 1.0, 2.0)
  # [1, 2, 3, 4]: P(min >= 3) = 1/16 > 2.5% > P(min = 4) = 1/256, so the 97.5th percentile is 3
  ci = stats.bootstrap_min([4.0, 3.0, 2.0, 1.0], num_resamples=10_000, seed=1)
  assert (ci.low, ci.median, ci.high) == (1.0, 1.0, 3.0)
  assert stats.bootstrap_min([5.0] * 3) == stats.Interval(5.0, 5.0, 5.0)
  errs = np.random.default_rng(0).uniform(10, 20, 30)
  assert stats.bootstrap_min(errs, 500, seed=3) == stats.bootstrap_min(errs, 500, seed=3)
  assert stats.bootstrap_min(errs, 500, seed=3).low >= errs.min()


def test_binned_trend():
  t = stats.binned_trend([4, 1, 3, 2], [7, 1, 5, 3], num_bins=2)
  np.testing.assert_allclose(t.x, [1.5, 3.5])
  np.testing.assert_allclose(t.mean, [2, 6])
  np.testing.assert_allclose(t.std, [1, 1])
  t = stats.binned_trend([1, 1, 2, 2], [0, 2, 4, 4], num_bins=4)  # few distinct values: one bin each
  np.testing.assert_allclose(t.x, [1, 2])
  np.testing.assert_allclose(t.mean, [1, 4])


@pytest.mark.parametrize("params", [(36.44, 24, 2.49, 13), (26.31, 88, 2.25, 25), (8.8, 24, 2.292, 40),
                                    (18.2, 64, 2.509, 54)])
def test_e_fit_is_zero_for_an_exact_regnet(params):
  gen = generate_regnet(*params)
  fit = fit_regnet(gen.block_widths)
  assert fit.e_fit == 0.0, fit


def test_e_fit_is_zero_for_a_zoo_regnet_spec():
  fit = fit_regnet(zoo.get_spec("regnetx_200mf"))  # widths unchanged by group-width compatibility
  assert fit.e_fit == 0.0 and fit.w0 == 24


def test_e_fit_is_the_mean_absolute_log_ratio():
  # w0=8, wa=0: every predicted width is 8
  assert np.isclose(fit_errors([8, 16, 32], 8, 0.0, 2.0), np.mean([0, np.log(2), np.log(4)]))
  shrinking = AnyNetSpec.from_lists(depths=(4, 3, 2, 1), widths=(512, 128, 32, 8))
  assert block_widths(shrinking) == (512,) * 4 + (128,) * 3 + (32,) * 2 + (8,)
  assert fit_regnet(shrinking).e_fit > 0.5
