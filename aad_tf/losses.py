"""Per-example loss terms of adversarial training and AAD (paper Eq. 8-10).

Every function returns a per-example vector [B]; `average` turns one into the replica-local
contribution to the global-batch mean (the one loss-scaling rule used for every term, so that
the sum over replicas that Keras optimizers apply yields the mean over the global batch).
"""

import tensorflow as tf

from aad_tf.gradcam import full_precision
from aad_tf.gradcam import map_distance

CLASSIFICATION_LOSSES = ('ce', 'soft_margin')


def average(per_example: tf.Tensor) -> tf.Tensor:
  """sum(per_example) / global_batch_size (tf.nn.compute_average_loss)."""
  return tf.nn.compute_average_loss(full_precision(per_example))


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  return tf.nn.sparse_softmax_cross_entropy_with_logits(
      tf.cast(labels, tf.int32), full_precision(logits))


def multilabel_soft_margin(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """The paper's L_c: -1/C sum_c [y_c log s(z_c) + (1 - y_c) log(1 - s(z_c))], y one-hot.

  Matches PyTorch's MultiLabelSoftMarginLoss with one-hot targets.
  """
  logits = full_precision(logits)
  onehot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1], dtype=logits.dtype)
  return tf.reduce_mean(
      tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=logits), axis=-1)


def classification(labels: tf.Tensor, logits: tf.Tensor, kind: str = 'ce') -> tf.Tensor:
  """L_c per example: 'ce' (cross-entropy) or 'soft_margin' (multi-label soft margin)."""
  if kind == 'ce':
    return cross_entropy(labels, logits)
  if kind == 'soft_margin':
    return multilabel_soft_margin(labels, logits)
  raise ValueError(f'classification loss must be one of {CLASSIFICATION_LOSSES}, got {kind!r}.')


def logit_pairing(logits_a: tf.Tensor, logits_b: tf.Tensor) -> tf.Tensor:
  """ALP (Kannan et al. 2018): mean squared difference between two logit vectors."""
  diff = full_precision(logits_a) - full_precision(logits_b)
  return tf.reduce_mean(tf.square(diff), axis=-1)


def _l2(v: tf.Tensor, epsilon: float = 1e-12) -> tf.Tensor:
  # The epsilon keeps the gradient finite where both softmax vectors coincide.
  return tf.sqrt(tf.reduce_sum(tf.square(v), axis=-1) + epsilon)


def rectification(logits: tf.Tensor, masked_logits: tf.Tensor) -> tf.Tensor:
  """One half of L_r (Eq. 8): -||softmax(f(x)) - softmax(f(x_m))||_2 per example."""
  probs = tf.nn.softmax(full_precision(logits))
  masked_probs = tf.nn.softmax(full_precision(masked_logits))
  return -_l2(probs - masked_probs)


def preservation(cam: tf.Tensor, adv_cam: tf.Tensor) -> tf.Tensor:
  """L_p (Eq. 9): ||g(x) - g(x_adv)||_1 over the Grad-CAM grid, per example."""
  return map_distance(cam, adv_cam)
