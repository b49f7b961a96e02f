"""The AAD training step: weights change, losses finite, gradients reach the head through Grad-CAM."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf import defenses
from aad_tf import gradcam
from aad_tf import losses
from aad_tf import models


def make(defense_name='madry', aad=True, **kwargs):
  keras.utils.set_random_seed(0)
  classifier = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  config = defenses.DefenseConfig(defense=defense_name, aad=aad,
                                 attack=defenses.AttackConfig(step_size=0.1, num_steps=2),
                                 **kwargs)
  model = defenses.AADModel(classifier, 'gradcam', config)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  return model


@pytest.fixture(scope='module')
def batch(mnist_arrays):
  return (tf.constant(mnist_arrays.x_train[:16]), tf.constant(mnist_arrays.y_train[:16]))


@pytest.mark.parametrize('name, aad', [('none', False), ('madry', False), ('madry', True),
                                       ('alp', False), ('alp', True)])
def test_train_step_changes_weights_and_losses_are_finite(name, aad, batch):
  model = make(name, aad)
  before = [v.numpy().copy() for v in model.classifier.trainable_variables]
  logs = tf.function(model.train_step)(batch)
  for key, value in logs.items():
    assert np.isfinite(float(value)), key
  expected = {'loss', 'class_loss', 'clean_acc'}
  expected |= {'adv_acc'} if name != 'none' else set()
  expected |= {'pair_loss'} if name == 'alp' else set()
  expected |= {'rect_loss', 'pres_loss'} if aad else set()
  assert set(logs) == expected
  after = model.classifier.trainable_variables
  assert all(np.any(b != a.numpy()) for b, a in zip(before, after))


def test_aad_loss_is_the_weighted_sum_of_its_terms(batch):
  model = make('madry', True, alpha=0.3, beta=0.2)
  x, y = batch
  x_adv = x + 0.05
  loss, parts, _, _ = model.compute_losses(x, y, tf.clip_by_value(x_adv, 0, 1))
  expected = parts['class_loss'] + 0.3 * parts['rect_loss'] + 0.2 * parts['pres_loss']
  np.testing.assert_allclose(parts['loss'].numpy(), expected.numpy(), rtol=1e-6)
  np.testing.assert_allclose(loss.numpy(), expected.numpy().mean(), rtol=1e-6)
  assert np.all(parts['rect_loss'].numpy() <= 0)
  assert np.all(parts['pres_loss'].numpy() >= 0)


def explicit_gradcam(features, images, labels):
  """Grad-CAM written out with its own nested tape, independently of aad_tf.gradcam."""
  with tf.GradientTape() as inner:
    inner.watch(images)
    a, logits = features(images, training=True)
    score = tf.reduce_sum(tf.gather(logits, labels, batch_dims=1))
  weights = tf.reduce_mean(inner.gradient(score, a), axis=[1, 2], keepdims=True)
  return tf.nn.relu(tf.reduce_sum(weights * a, axis=-1))


def test_preservation_gradient_reaches_the_head_through_gradcam(batch):
  """L_p alone gives the head a gradient (via the Grad-CAM channel weights, second order) equal
  to an explicit nested-tape computation. Dropout off (keep_prob 1) so both see one network."""
  keras.utils.set_random_seed(0)
  classifier = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10, keep_prob=1.0)
  config = defenses.DefenseConfig(defense='madry', aad=True, alpha=0.0, beta=1.0)
  model = defenses.AADModel(classifier, 'gradcam', config)
  x, y = batch
  x_adv = tf.clip_by_value(x + 0.1 * tf.sign(tf.random.normal(tf.shape(x), seed=1)), 0, 1)
  head = classifier.get_layer('logits').kernel
  with tf.GradientTape() as tape:
    _, parts, _, _ = model.compute_losses(x, y, x_adv)
    pres = losses.average(parts['pres_loss'])
  grad = tape.gradient(pres, head).numpy()

  features = gradcam.FeatureModel(classifier, 'gradcam')
  with tf.GradientTape() as outer:
    reference = tf.reduce_mean(tf.reduce_sum(tf.abs(
        explicit_gradcam(features, x, y) - explicit_gradcam(features, x_adv, y)), axis=[1, 2]))
  expected = outer.gradient(reference, head).numpy()
  assert np.abs(expected).max() > 0
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def test_hard_mask_is_a_constant(batch):
  """No gradient flows through the hard mask Att(x) (paper: the mask is a constant)."""
  x, _ = batch
  cam = tf.random.uniform([16, 14, 14])
  with tf.GradientTape() as tape:
    tape.watch(cam)
    masked = gradcam.mask_attention(x, cam)
  assert tape.gradient(masked, cam) is None


@pytest.mark.parametrize('kwargs, match', [
    (dict(defense='trades_typo'), 'defense must be one of'),
    (dict(defense='none', aad=True), 'aad needs adversarial examples'),
    (dict(alpha=-1.0), 'alpha'),
    (dict(kappa='median'), 'kappa'),
    (dict(classification_loss='hinge'), 'classification_loss'),
])
def test_bad_config_fails_early(kwargs, match):
  with pytest.raises(ValueError, match=match):
    defenses.DefenseConfig(**kwargs)


def test_attack_config_validation():
  with pytest.raises(ValueError, match='eps'):
    defenses.AttackConfig(eps=3.0)
