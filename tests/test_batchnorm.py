"""Tests of aad_tf.models.batchnorm: batch statistics against NumPy, recalibration, the gap."""

import keras
import numpy as np
import pytest

from aad_tf import models
from aad_tf.models import batchnorm


def tiny_bn_model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((6, 6, 2))
  h = keras.layers.Conv2D(3, 3, use_bias=False, name='conv')(inputs)
  h = keras.layers.BatchNormalization(name='bn', epsilon=1e-5)(h)
  h = keras.layers.ReLU()(h)
  h = keras.layers.GlobalAveragePooling2D()(h)
  return keras.Model(inputs, keras.layers.Dense(4, name='head')(h))


def images(n, seed=1):
  return np.random.default_rng(seed).normal(2.0, 3.0, (n, 6, 6, 2)).astype(np.float32)


def test_batch_statistics_are_the_conv_outputs_moments_and_leave_moving_stats_alone():
  model = tiny_bn_model()
  x = images(20)
  bn = model.get_layer('bn')
  before = bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()
  [(mean, variance)] = batchnorm.batch_statistics(model, x, batch_size=10)
  conv = model.get_layer('conv')(x).numpy()
  halves = [conv[:10].reshape(-1, 3), conv[10:].reshape(-1, 3)]  # the per-batch moments, averaged
  np.testing.assert_allclose(mean, np.mean([h.mean(0) for h in halves], 0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(variance, np.mean([h.var(0) for h in halves], 0), rtol=1e-4)
  np.testing.assert_array_equal(bn.moving_mean.numpy(), before[0])
  np.testing.assert_array_equal(bn.moving_variance.numpy(), before[1])


def test_recalibrate_makes_inference_mode_compute_what_training_mode_computes():
  model = tiny_bn_model()
  x = images(16)
  training = np.asarray(model(x, training=True))
  bn = model.get_layer('bn')
  bn.moving_mean.assign(np.array([5.0, -5.0, 1.0], np.float32))  # stale statistics
  bn.moving_variance.assign(np.array([0.1, 20.0, 1.0], np.float32))
  assert np.max(np.abs(model(x, training=False).numpy() - training)) > 0.1
  assert batchnorm.statistics_gap(model, x, batch_size=16)[0].max_mean_shift > 1.0
  batchnorm.recalibrate(model, x, batch_size=16)
  np.testing.assert_allclose(model(x, training=False).numpy(), training, rtol=1e-4, atol=1e-4)
  [gap] = batchnorm.statistics_gap(model, x, batch_size=16)
  assert gap.name == 'bn' and gap.max_mean_shift < 1e-3
  np.testing.assert_allclose(gap.variance_ratio, 1.0, rtol=1e-3)


def test_accuracy_in_both_modes_sees_the_gap_and_restores_the_moving_stats():
  model = tiny_bn_model()
  x = images(40)
  labels = np.argmax(model(x, training=True).numpy(), -1)  # what batch statistics predict
  bn = model.get_layer('bn')
  bn.moving_mean.assign(np.array([50.0, -50.0, 50.0], np.float32))
  stale = bn.moving_mean.numpy().copy()
  assert batchnorm.accuracy(model, x, labels, training=True, batch_size=40) == 1.0
  assert batchnorm.accuracy(model, x, labels, training=False, batch_size=40) < 1.0
  np.testing.assert_array_equal(bn.moving_mean.numpy(), stale)


def test_resnet9_layers_are_found_and_a_model_without_batchnorm_is_refused():
  resnet = models.get_model('resnet9', input_shape=(32, 32, 3), num_classes=10, width=4)
  assert len(batchnorm.batchnorm_layers(resnet)) == 8
  lenet = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  with pytest.raises(ValueError, match='no BatchNormalization'):
    batchnorm.batch_statistics(lenet, np.zeros((4, 28, 28, 1), np.float32), batch_size=4)
  with pytest.raises(ValueError, match='at least one batch'):
    batchnorm.batch_statistics(resnet, np.zeros((4, 32, 32, 3), np.float32), batch_size=8)
