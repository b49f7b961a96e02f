"""Loss terms against hand-computed NumPy values."""

import numpy as np
import tensorflow as tf

from aad_tf import losses


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
LABELS = np.array([0, 1])


def test_cross_entropy():
  expected = -np.log(softmax(LOGITS)[[0, 1], LABELS])
  np.testing.assert_allclose(losses.classification(LABELS, LOGITS, 'ce').numpy(), expected,
                             rtol=1e-6)


def test_multilabel_soft_margin_matches_pytorch_definition():
  y = np.eye(3)[LABELS]
  sig = 1 / (1 + np.exp(-LOGITS))
  expected = -(y * np.log(sig) + (1 - y) * np.log(1 - sig)).mean(-1)
  np.testing.assert_allclose(losses.classification(LABELS, LOGITS, 'soft_margin').numpy(),
                             expected, rtol=1e-6)


def test_unknown_classification_loss():
  try:
    losses.classification(LABELS, LOGITS, 'hinge')
  except ValueError as e:
    assert 'soft_margin' in str(e)
  else:
    raise AssertionError('expected ValueError')


def test_logit_pairing_is_mean_squared_difference():
  other = LOGITS[::-1]
  np.testing.assert_allclose(losses.logit_pairing(LOGITS, other).numpy(),
                             ((LOGITS - other) ** 2).mean(-1), rtol=1e-6)


def test_rectification_is_negative_l2_between_softmaxes():
  masked = np.array([[0.0, 0.0, 0.0], [0.1, 0.2, 3.0]])
  expected = -np.linalg.norm(softmax(LOGITS) - softmax(masked), axis=-1)
  np.testing.assert_allclose(losses.rectification(LOGITS, masked).numpy(), expected, atol=1e-5)
  # Identical outputs: value ~0 and a finite gradient (the epsilon inside the norm).
  z = tf.constant(LOGITS)
  with tf.GradientTape() as tape:
    tape.watch(z)
    value = tf.reduce_sum(losses.rectification(z, z))
  assert np.all(np.isfinite(tape.gradient(value, z).numpy()))


def test_preservation_is_l1_over_the_grid():
  a = np.random.default_rng(0).random((2, 3, 3))
  b = np.random.default_rng(1).random((2, 3, 3))
  np.testing.assert_allclose(losses.preservation(a, b).numpy(), np.abs(a - b).sum((1, 2)),
                             rtol=1e-6)


def test_average_divides_by_global_batch():
  per_example = tf.constant([1.0, 2.0, 3.0, 6.0])
  np.testing.assert_allclose(losses.average(per_example).numpy(), 3.0)


def test_rectification_of_bfloat16_logits_is_float32():
  """Issue 25: the softmaxes and their L2 distance are float32 under mixed precision."""
  logits = tf.cast(tf.random.stateless_normal([4, 10], [1, 2], stddev=3.0), tf.bfloat16)
  masked = tf.cast(tf.random.stateless_normal([4, 10], [3, 4], stddev=3.0), tf.bfloat16)
  got = losses.rectification(logits, masked)
  assert got.dtype == tf.float32
  z, zm = (t.numpy().astype(np.float64) for t in (logits, masked))
  expected = -np.sqrt(((softmax(z) - softmax(zm)) ** 2).sum(-1) + 1e-12)
  np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)  # bfloat16 softmaxes: ~1e-3 off
  # An unmasked image: the distance is zero (the epsilon's sqrt is all that is left).
  np.testing.assert_array_equal(losses.rectification(logits, logits).numpy(),
                                -np.sqrt(np.float32(1e-12)))
