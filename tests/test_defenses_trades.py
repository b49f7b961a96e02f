"""Tests for aad_tf.defenses.trades: TRADES' loss against NumPy, its craft is trades_attack."""

import numpy as np
import tensorflow as tf

from aad_tf import attacks
from aad_tf import defenses as defense_lib
from defense_models import CLASSES, EPS, images, linear_model, np_kl, np_softmax


def test_trades_loss_matches_numpy():
  rng = np.random.default_rng(3)
  clean = rng.normal(size=(4, CLASSES))
  adv = rng.normal(size=(4, CLASSES))
  y = np.array([0, 2, 1, 1])
  config = defense_lib.DefenseConfig(defense='trades', hparams={'trades_beta': 2.5})
  per_example, parts = defense_lib.BASE_DEFENSES['trades'].loss(
      tf.constant(y), tf.constant(clean, tf.float32), tf.constant(adv, tf.float32), config)
  ce = -np.log(np_softmax(clean)[np.arange(4), y])
  np.testing.assert_allclose(parts['class_loss'].numpy(), ce, rtol=1e-5)
  np.testing.assert_allclose(parts['kl_loss'].numpy(), np_kl(clean, adv), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(per_example.numpy(), ce + 2.5 * np_kl(clean, adv), rtol=1e-4)


def test_trades_crafts_with_the_training_attack_settings():
  fn, _, _ = linear_model()
  x = tf.constant(images())
  attack = defense_lib.AttackConfig(eps=EPS, step_size=0.05, num_steps=3)
  config = defense_lib.DefenseConfig(defense='trades', attack=attack)
  got = defense_lib.BASE_DEFENSES['trades'].craft(fn, x, None, config)
  # Unbound (no model): the start is a stateful draw, so compare the KL it reaches, not pixels.
  assert np.all(np.abs(got.numpy() - x.numpy()) <= EPS + 1e-6)
  assert np.all(attacks.kl_divergence(fn(x), fn(got)).numpy() > 1e-4)
