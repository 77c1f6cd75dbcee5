"""Learning-rate schedule and SGD against hand-computed pycls / torch.optim.SGD values."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from regnet_jax import config as config_lib
from regnet_jax import optim


def _cfg(**kw):
  c = config_lib.base_config()
  c.update(dict(learning_rate=0.1, num_epochs=10, warmup_epochs=5.0, warmup_factor=0.1, lr_schedule="cosine"))
  c.update(kw)
  return c


@pytest.mark.parametrize("epoch, expected", [
    (0, 0.1 * 1.0 * 0.1),  # cos factor 1, warm-up factor 0.1
    (1, 0.1 * 0.5 * (1 + math.cos(math.pi / 10)) * (0.1 * 0.8 + 0.2)),
    (4, 0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 10)) * (0.1 * 0.2 + 0.8)),
    (5, 0.1 * 0.5),  # warm-up over
    (9, 0.1 * 0.5 * (1 + math.cos(math.pi * 9 / 10))),
])
def test_pycls_epoch_lr(epoch, expected):
  lr = optim.epoch_learning_rate(epoch, base_lr=0.1, num_epochs=10, warmup_epochs=5, warmup_factor=0.1)
  np.testing.assert_allclose(float(lr), expected, rtol=1e-6)


def test_schedule_is_constant_within_an_epoch():
  sched = optim.make_schedule(_cfg(), steps_per_epoch=100)
  assert float(sched(0)) == float(sched(99)) == pytest.approx(0.01)
  np.testing.assert_allclose(float(sched(100)), 0.1 * 0.5 * (1 + math.cos(math.pi / 10)) * 0.28, rtol=1e-6)
  np.testing.assert_allclose(float(sched(500)), 0.05, rtol=1e-6)


def test_min_lr_and_constant():
  lr = optim.epoch_learning_rate(10, base_lr=0.1, num_epochs=10, min_lr=0.01)
  np.testing.assert_allclose(float(lr), 0.1 * 0.01, rtol=1e-6)
  assert float(optim.epoch_learning_rate(7, base_lr=0.2, num_epochs=10, schedule="constant")) == pytest.approx(0.2)
  with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
    optim.make_schedule(_cfg(lr_schedule="step"), 10)


def test_sgd_matches_torch_semantics():
  # torch.optim.SGD(lr, momentum=0.9, nesterov=True, weight_decay=0.1), two steps, by hand.
  c = _cfg(learning_rate=0.5, warmup_epochs=0.0, lr_schedule="constant", weight_decay=0.1, momentum=0.9)
  tx = optim.make_optimizer(c, steps_per_epoch=10)
  p = jnp.array([1.0])
  state = tx.init(p)
  g1, g2 = jnp.array([0.5]), jnp.array([-0.25])
  u, state = tx.update(g1, state, p)
  p1 = optax.apply_updates(p, u)
  d1 = 0.5 + 0.1 * 1.0
  buf = d1
  expected1 = 1.0 - 0.5 * (d1 + 0.9 * buf)
  np.testing.assert_allclose(p1, [expected1], rtol=1e-6)
  u, state = tx.update(g2, state, p1)
  p2 = optax.apply_updates(p1, u)
  d2 = -0.25 + 0.1 * expected1
  buf = 0.9 * buf + d2
  np.testing.assert_allclose(p2, [expected1 - 0.5 * (d2 + 0.9 * buf)], rtol=1e-6)


def test_plain_sgd_without_momentum():
  c = _cfg(learning_rate=0.1, warmup_epochs=0.0, lr_schedule="constant", weight_decay=0.0, momentum=0.0,
           nesterov=False)
  tx = optim.make_optimizer(c, 10)
  p = jnp.array([2.0])
  u, _ = tx.update(jnp.array([1.0]), tx.init(p), p)
  np.testing.assert_allclose(optax.apply_updates(p, u), [1.9], rtol=1e-6)


def test_fixed_step_runs_follow_the_curve_continuously():
  c = _cfg(num_train_steps=50, warmup_epochs=0.0)
  sched = optim.make_schedule(c, steps_per_epoch=100)  # half an epoch in all
  np.testing.assert_allclose(float(sched(0)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(sched(25)), 0.05, rtol=1e-5)
  assert float(sched(50)) == pytest.approx(0.0, abs=1e-7)
