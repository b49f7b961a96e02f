"""Tests for aad_tf.attacks.core: checks, projection, random start, objectives, the loop."""

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import attacks


def test_cw_margin_sign():
  logits = tf.constant([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
  np.testing.assert_allclose(attacks.cw_margin(logits, tf.constant([0, 0])).numpy(), [-2.0, 2.0])


def test_cross_entropy_matches_numpy():
  logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
  labels = np.array([2, 1])
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(attacks.cross_entropy(tf.constant(logits, tf.float32), labels).numpy(),
                             -np.log(p[np.arange(2), labels]), rtol=1e-5)


def test_project_clips_to_the_ball_and_the_unit_box():
  x = tf.constant([[0.05, 0.5, 0.95]])
  got = attacks.project(tf.constant([[-1.0, 0.9, 0.9]]), x, 0.1).numpy()
  np.testing.assert_allclose(got, [[0.0, 0.6, 0.9]], atol=1e-7)


def test_seeded_random_start_is_in_the_ball_and_repeats():
  x = tf.fill([4, 5, 5, 1], 0.5)
  seed = tf.constant([1, 2])
  start = attacks.random_start(x, 0.2, seed).numpy()
  assert np.all(np.abs(start - 0.5) <= 0.2 + 1e-7) and np.std(start) > 0.05
  np.testing.assert_array_equal(start, attacks.random_start(x, 0.2, seed).numpy())


def test_iterate_ascends_a_linear_objective_to_the_corner():
  x = tf.fill([1, 2, 2, 1], 0.5)
  w = tf.constant([1.0, -1.0, 1.0, -1.0])
  objective = lambda z: tf.reduce_sum(tf.reshape(z, [1, 4]) * w, axis=-1)
  got = attacks.iterate(objective, x, x, eps=0.1, step_size=0.03, num_steps=5).numpy()
  np.testing.assert_allclose(got.ravel(), [0.6, 0.4, 0.6, 0.4], atol=1e-6)


@pytest.mark.parametrize('eps, step_size, num_steps, match', [
    (1.5, 0.1, 1, 'eps'), (-0.1, 0.1, 1, 'eps'), (0.1, -1.0, 1, 'step_size'),
    (0.1, 0.1, 2.5, 'num_steps'), (0.1, 0.1, -1, 'num_steps'),
])
def test_checks_refuse_bad_numbers(eps, step_size, num_steps, match):
  with pytest.raises(ValueError, match=match):
    attacks.check_eps(eps)
    attacks.check_steps(step_size, num_steps)


def test_checks_pass_tensors_through():
  eps = tf.constant(0.3)
  assert attacks.check_eps(eps) is eps
  attacks.check_steps(tf.constant(0.1), tf.constant(3))
