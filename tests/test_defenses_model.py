"""AAD's training step, checked against the same step with each behaviour switched off.

Noise-free attention passes, one BatchNorm update per step, the adversarial mask from g(x_adv),
Grad-CAM of the true label, alpha = beta = 0 is Madry, and the aad/* diagnostics.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf import defenses
from aad_tf import gradcam
from aad_tf import losses
from aad_tf import models


def lenet_model(aad=True, *, eps=0.3, base='madry', seed=0, optimizer=None, **kwargs):
  """LeNet (dropout keep 0.5) in an AADModel; eps=0 makes x_adv = x."""
  keras.utils.set_random_seed(seed)
  classifier = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  config = defenses.DefenseConfig(
      defense=base, aad=aad,
      attack=defenses.AttackConfig(eps=eps, step_size=0.1, num_steps=2), **kwargs)
  model = defenses.AADModel(classifier, 'gradcam', config)
  model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3))
  model.optimizer.build(model.trainable_variables)
  return model


def bn_classifier(seed=0):
  """conv -> BatchNorm -> ReLU -> conv -> ReLU [gradcam] -> GAP -> dense."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((8, 8, 1))
  h = keras.layers.Conv2D(4, 3, padding='same', name='conv1')(inputs)
  h = keras.layers.BatchNormalization(momentum=0.9, name='bn')(h)
  h = keras.layers.ReLU()(h)
  h = keras.layers.Conv2D(6, 3, padding='same', name='conv2')(h)
  h = keras.layers.ReLU(name='gradcam')(h)
  h = keras.layers.GlobalAveragePooling2D()(h)
  return keras.Model(inputs, keras.layers.Dense(3, name='head')(h))


def perturbed(x, size, seed):
  """x moved by +-size per pixel (a fixed random sign pattern), clipped to [0, 1]."""
  return tf.clip_by_value(x + size * tf.sign(tf.random.stateless_normal(x.shape, seed)), 0, 1)


@pytest.fixture(scope='module')
def batch(mnist_arrays):
  return (tf.constant(mnist_arrays.x_train[:16]), tf.constant(mnist_arrays.y_train[:16]))


@pytest.mark.parametrize('mode, noise_free', [('inference', True), ('training', False)])
def test_preservation_of_an_image_with_itself_is_zero_only_without_dropout_noise(
    mode, noise_free, batch):
  # eps = 0: x_adv = x, so L_p(x, x_adv) is the dropout noise floor of the attention passes.
  model = lenet_model(eps=0.0, attention_mode=mode)
  logs = tf.function(model.train_step)(batch)
  pres = float(logs['pres_loss'])
  if noise_free:
    assert pres < 1e-7  # exactly 0 on the CPU; non-deterministic GPU kernels may leave ~1e-9
  else:
    assert pres > 1e-3  # two dropout draws of the same image give two maps


def test_attention_terms_reach_every_weight_in_inference_mode(batch):
  model = lenet_model(alpha=1.0, beta=1.0)
  x, y = batch
  x_adv = perturbed(x, 0.2, [1, 2])
  variables = model.trainable_variables
  with tf.GradientTape(persistent=True) as tape:
    terms = model.loss_terms(x, y, x_adv)
    rect, pres = tf.reduce_mean(terms.rect), tf.reduce_mean(terms.pres)
  for variable, grad in zip(variables, tape.gradient(rect, variables)):
    assert grad is not None and np.any(grad.numpy() != 0), ('rect', variable.path)
  # L_p reaches every kernel through Grad-CAM's inner gradient (second order); the biases after
  # the Grad-CAM layer leave d logit / d A unchanged (piecewise linear head), so theirs is 0.
  for variable, grad in zip(variables, tape.gradient(pres, variables)):
    if 'kernel' in variable.path:
      assert grad is not None and np.any(grad.numpy() != 0), ('pres', variable.path)


def test_one_batchnorm_update_per_step_with_aad():
  """The moving mean after one step is momentum * old + (1 - momentum) * mean(conv1(batch)).

  With eps = 0 (x_adv = x) the base loss's single training pass sees x (Madry) or [x; x] (ALP),
  whose per-channel mean is the same; four updates (the 'training' mode) give another value.
  """
  x = tf.random.stateless_uniform([6, 8, 8, 1], [3, 4])
  y = tf.constant([0, 1, 2, 0, 1, 2])
  results = {}
  for base, mode in (('madry', 'inference'), ('alp', 'inference'), ('madry', 'training')):
    classifier = bn_classifier()
    config = defenses.DefenseConfig(
        defense=base, aad=True, attention_mode=mode, alpha=1.0, beta=1.0,
        attack=defenses.AttackConfig(eps=0.0, step_size=0.1, num_steps=1))
    model = defenses.AADModel(classifier, 'gradcam', config)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    bn = classifier.get_layer('bn')
    # The step's forward pass uses the weights before the update.
    conv1 = keras.Model(classifier.inputs, classifier.get_layer('conv1').output)
    batch_mean = tf.reduce_mean(conv1(x), axis=[0, 1, 2]).numpy()
    old = bn.moving_mean.numpy().copy()
    tf.function(model.train_step)((x, y))
    results[(base, mode)] = bn.moving_mean.numpy()
    expected = 0.9 * old + 0.1 * batch_mean
    if mode == 'inference':
      np.testing.assert_allclose(results[(base, mode)], expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(results[('madry', 'training')], expected, rtol=1e-3, atol=1e-4)


def test_empty_maps_give_empty_attention_areas_and_unmasked_images():
  x = tf.random.stateless_uniform([3, 8, 8, 1], [5, 6])
  zero = tf.zeros([3, 4, 4])
  np.testing.assert_array_equal(gradcam.attention_area(zero).numpy(), 0.0)
  np.testing.assert_array_equal(gradcam.mask_attention(x, zero).numpy(), x.numpy())
  # rms_softmax turns a flat map into a uniform one: still no contrast, still nothing masked.
  uniform = tf.fill([3, 4, 4], 1.0 / 16)
  np.testing.assert_array_equal(gradcam.mask_attention(x, uniform).numpy(), x.numpy())
  # One non-zero cell is attended and blanked.
  one = tf.tensor_scatter_nd_update(zero, [[0, 1, 2]], [0.5])
  masked = gradcam.mask_attention(x, one).numpy()
  np.testing.assert_array_equal(masked[0, 2:4, 4:6], 0.0)
  np.testing.assert_array_equal(masked[1:], x.numpy()[1:])


def test_adversarial_mask_comes_from_the_adversarial_map(batch):
  model = lenet_model()
  x, y = batch
  x_adv = perturbed(x, 0.3, [7, 8])
  terms = model.loss_terms(x, y, x_adv)
  features = model.features.fn(training=False)
  adv_area = gradcam.attention_area(gradcam.gradcam(features, x_adv, y)[0])
  clean_area = gradcam.attention_area(gradcam.gradcam(features, x, y)[0])
  np.testing.assert_array_equal(terms.adv_area.numpy(), adv_area.numpy())
  np.testing.assert_array_equal(terms.area.numpy(), clean_area.numpy())
  assert np.any(adv_area.numpy() != clean_area.numpy())


def test_rectification_masks_each_image_by_its_own_map_in_inference_passes(batch):
  model = lenet_model()
  x, y = batch
  x_adv = perturbed(x, 0.3, [7, 8])
  terms = model.loss_terms(x, y, x_adv)
  features = model.features.fn(training=False)
  expected = 0.0
  for images in (x, x_adv):
    cam, logits = gradcam.gradcam(features, images, y)
    masked = gradcam.mask_attention(images, cam)
    expected += losses.rectification(logits, model.classifier(masked, training=False))
  np.testing.assert_allclose(terms.rect.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_training_maps_explain_the_true_label(batch):
  model = lenet_model(gradcam_normalize='max')
  x, y = batch
  terms = model.loss_terms(x, y, x)
  features = model.features.fn(training=False)
  true_cam, logits = gradcam.gradcam(features, x, y, normalize='max')
  predicted_cam, _ = gradcam.gradcam(features, x, None, normalize='max')
  np.testing.assert_allclose(terms.cam.numpy(), true_cam.numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(terms.adv_cam.numpy(), true_cam.numpy(), rtol=1e-6, atol=1e-7)
  wrong = np.argmax(logits.numpy(), -1) != y.numpy()
  assert wrong.any()  # an untrained LeNet: most predictions are wrong
  assert not np.allclose(terms.cam.numpy()[wrong], predicted_cam.numpy()[wrong], atol=1e-4)


def test_aad_with_zero_weights_is_the_base_defense_and_positive_weights_change_it(batch):
  """Plain SGD, so that a weight's update difference is exactly -lr * weight * grad of its term."""
  lr = 0.1

  def update(aad, alpha=0.0, beta=0.0):
    model = lenet_model(aad, alpha=alpha, beta=beta, optimizer=keras.optimizers.SGD(lr))
    tf.function(model.train_step)(batch)
    return [v.numpy() for v in model.classifier.trainable_variables]

  plain = update(False)
  for a, b in zip(plain, update(True)):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-7)
  # Linear in each weight, and alpha moves the weights along L_r, beta along L_p.
  delta = lambda alpha, beta: np.concatenate(
      [(b - a).ravel() for a, b in zip(plain, update(True, alpha, beta))])
  rect, rect_double, pres = delta(0.5, 0.0), delta(1.0, 0.0), delta(0.0, 0.5)
  assert np.abs(rect).max() > 1e-6 and np.abs(pres).max() > 1e-6
  np.testing.assert_allclose(rect_double, 2 * rect, rtol=1e-3, atol=1e-7)
  cosine = rect @ pres / (np.linalg.norm(rect) * np.linalg.norm(pres))
  assert abs(cosine) < 0.99  # two different directions


def test_diagnostics_measure_each_term_against_the_base_loss(batch):
  x, y = batch
  low = lenet_model(alpha=0.1, beta=0.0, gradcam_normalize='max').aad_diagnostics(x, y)
  high = lenet_model(alpha=1.0, beta=0.0, gradcam_normalize='max').aad_diagnostics(x, y)
  assert float(low['grad_ratio_pres']) == 0.0  # beta = 0: no preservation gradient
  assert float(low['grad_ratio_rect']) > 0
  # Same weights and batch: the ratio is linear in alpha.
  np.testing.assert_allclose(float(high['grad_ratio_rect']), 10 * float(low['grad_ratio_rect']),
                             rtol=1e-4)
  assert -1.0 <= float(high['cos_rect']) <= 1.0
  assert 0.0 < float(high['area_fraction']) < 1.0
  # 'max' maps peak at 1 (0 for an empty map).
  assert 0.0 < float(high['map_max']) <= 1.0 + 1e-6
  only_pres = [lenet_model(alpha=0.0, beta=b, gradcam_normalize='max').aad_diagnostics(x, y)
               for b in (0.1, 1.0)]
  assert float(only_pres[0]['grad_ratio_rect']) == 0.0
  assert float(only_pres[0]['cos_rect']) == 0.0 and float(high['cos_pres']) == 0.0
  assert abs(float(high['cos_rect'])) > 1e-4 and abs(float(only_pres[1]['cos_pres'])) > 1e-4
  np.testing.assert_allclose(float(only_pres[1]['grad_ratio_pres']),
                             10 * float(only_pres[0]['grad_ratio_pres']), rtol=1e-4)
  # Map statistics of the clean maps of this batch.
  model = lenet_model(gradcam_normalize='max')
  values = model.aad_diagnostics(x, y)
  cam, _ = gradcam.gradcam(model.features.fn(training=False), x, y, normalize='max')
  np.testing.assert_allclose(float(values['area_fraction']), float(tf.reduce_mean(
      gradcam.area_fraction(gradcam.attention_area(cam)))), rtol=1e-6)
  np.testing.assert_allclose(float(values['map_mean']), float(tf.reduce_mean(cam)), rtol=1e-6)
  with pytest.raises(ValueError, match='AAD'):
    lenet_model(aad=False).aad_diagnostics(x, y)


@pytest.mark.parametrize('kwargs, match', [
    (dict(gradcam_normalize='l2'), 'normalize'),
    (dict(attention_mode='eval'), 'attention_mode'),
])
def test_bad_aad_settings_fail_early(kwargs, match):
  with pytest.raises(ValueError, match=match):
    defenses.DefenseConfig(aad=True, **kwargs)
