"""Tests for aad_tf.attacks.inner: single-step (StepLL / FGSM, R+Step-LL) and TRADES' attack."""

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import attacks
from defense_models import EPS, SHAPE, CLASSES, linear_model, images, np_softmax, np_kl


def test_kl_divergence_matches_numpy():
  rng = np.random.default_rng(0)
  clean = rng.normal(scale=3.0, size=(5, 4))
  adv = rng.normal(scale=3.0, size=(5, 4))
  got = attacks.kl_divergence(tf.constant(clean, tf.float32), tf.constant(adv, tf.float32))
  np.testing.assert_allclose(got.numpy(), np_kl(clean, adv), rtol=1e-4, atol=1e-6)
  same = attacks.kl_divergence(tf.constant(clean, tf.float32),
                                     tf.constant(clean, tf.float32))
  np.testing.assert_allclose(same.numpy(), 0.0, atol=1e-6)


def test_kl_divergence_finite_for_saturated_probabilities():
  clean = tf.constant([[200.0, -200.0, 0.0]])
  adv = tf.constant([[-200.0, 200.0, 0.0]])
  value = attacks.kl_divergence(clean, adv).numpy()
  assert np.isfinite(value).all()
  np.testing.assert_allclose(value, [400.0], rtol=1e-5)


def test_stepll_step_matches_numpy_and_moves_away_from_least_likely():
  fn, w, b = linear_model()
  x = images()
  x_adv = attacks.single_step(fn, tf.constant(x), None, eps=EPS, method='stepll').numpy()
  flat = x.reshape(len(x), -1).astype(np.float64)
  logits = flat @ w + b
  y_ll = logits.argmin(axis=-1)
  # d CE(z, y_LL) / dx = (softmax(z) - onehot(y_LL)) W^T for z = x W + b.
  grad = (np_softmax(logits) - np.eye(CLASSES)[y_ll]) @ w.T
  expected = np.clip(flat - EPS * np.sign(grad), 0.0, 1.0).reshape(x.shape)
  np.testing.assert_allclose(x_adv, expected, atol=1e-6)
  adv_logits = x_adv.reshape(len(x), -1) @ w + b
  ce_ll = lambda z: -np.log(np_softmax(z)[np.arange(len(x)), y_ll])
  assert np.all(ce_ll(adv_logits) < ce_ll(logits))


def test_single_step_fgsm_matches_attacks_fgsm():
  fn, _, _ = linear_model()
  x, y = tf.constant(images()), tf.constant([0, 1, 2, 0, 1, 2])
  np.testing.assert_allclose(
      attacks.single_step(fn, x, y, eps=EPS, method='fgsm').numpy(),
      attacks.fgsm(fn, x, y, eps=EPS).numpy(), atol=1e-7)


def test_random_step_lands_on_the_ball_or_the_centre():
  # With a = eps / 2: x' = x +- a, then +- (eps - a), so interior pixels move by 0 or eps exactly.
  fn, _, _ = linear_model()
  x = np.random.default_rng(2).uniform(0.35, 0.65, size=(8, *SHAPE)).astype(np.float32)
  x_adv = attacks.single_step(fn, tf.constant(x), None, eps=EPS, method='stepll',
                                    random_step=0.5).numpy()
  moved = np.abs(x_adv - x)
  assert np.all(np.isclose(moved, 0.0, atol=1e-6) | np.isclose(moved, EPS, atol=1e-6))
  assert 0.2 < np.mean(np.isclose(moved, EPS, atol=1e-6)) < 0.8
  plain = attacks.single_step(fn, tf.constant(x), None, eps=EPS, method='stepll').numpy()
  np.testing.assert_allclose(np.abs(plain - x), EPS, atol=1e-6)


def test_seeded_random_draws_repeat():
  fn, _, _ = linear_model()
  x = tf.constant(images())
  seed = tf.constant([3, 4], tf.int64)
  step = lambda s: attacks.single_step(fn, x, None, eps=EPS, random_step=0.5, seed=s)
  np.testing.assert_array_equal(step(seed).numpy(), step(seed).numpy())
  assert not np.array_equal(step(seed).numpy(), step(seed + 1).numpy())
  trades = lambda s: attacks.trades_attack(fn, x, eps=EPS, step_size=0.05, num_steps=2,
                                                 seed=s)
  np.testing.assert_array_equal(trades(seed).numpy(), trades(seed).numpy())


def test_trades_attack_raises_kl_and_stays_in_ball():
  fn, _, _ = linear_model()
  x = tf.constant(images())
  x_adv = attacks.trades_attack(fn, x, eps=EPS, step_size=0.05, num_steps=5,
                                      seed=tf.constant([1, 2]))
  assert np.all(np.abs(x_adv.numpy() - x.numpy()) <= EPS + 1e-6)
  assert x_adv.numpy().min() >= 0.0 and x_adv.numpy().max() <= 1.0
  kl = attacks.kl_divergence(fn(x), fn(x_adv)).numpy()
  start = attacks.trades_attack(fn, x, eps=EPS, step_size=0.05, num_steps=0,
                                      seed=tf.constant([1, 2]))
  assert np.all(np.abs(start.numpy() - x.numpy()) < 0.01)
  kl_start = attacks.kl_divergence(fn(x), fn(start)).numpy()
  assert np.all(kl > kl_start + 1e-3)


def test_single_step_refuses_bad_arguments():
  fn, _, _ = linear_model()
  x = tf.constant(images())
  with pytest.raises(ValueError, match='stepll_random_step'):
    attacks.single_step(fn, x, None, eps=EPS, random_step=1.0)
  with pytest.raises(ValueError, match='method'):
    attacks.single_step(fn, x, None, eps=EPS, method='pgd')
