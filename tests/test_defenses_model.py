"""Tests for aad_tf.defenses.model: AADModel's training step with every base defense, and AAD's
terms checked against the same step with each behaviour switched off.

Weights change and losses are finite for every family, the loss is the weighted sum of its terms,
L_p's gradient reaches the head through Grad-CAM, noise-free attention passes, one BatchNorm update
per step, the adversarial mask from g(x_adv), Grad-CAM of the true label, alpha = beta = 0 is
Madry, the aad/* diagnostics, and the logged metric names are the defense's.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf import defenses
from aad_tf import gradcam
from aad_tf import losses
from aad_tf import models
from aad_tf import precision
from defense_models import CLASSES, EPS, images, tiny_classifier


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


@pytest.mark.parametrize('mode, noise_free', [('inference', True), ('batch', True),
                                              ('training', False)])
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
  for base, mode in (('madry', 'inference'), ('alp', 'inference'), ('madry', 'batch'),
                     ('madry', 'training')):
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
    if mode in ('inference', 'batch'):
      np.testing.assert_allclose(results[(base, mode)], expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(results[('madry', 'training')], expected, rtol=1e-3, atol=1e-4)


def test_batch_mode_attention_terms_use_batch_statistics_and_leave_momentum_alone():
  """'batch' computes L_r and L_p as 'training' does (batch statistics; this network has no
  dropout) and not as 'inference' does (moving statistics), and restores the BatchNorm momentum."""
  x = tf.random.stateless_uniform([6, 8, 8, 1], [3, 4])
  x_adv = perturbed(x, 0.05, [5, 6])
  y = tf.constant([0, 1, 2, 0, 1, 2])
  terms = {}
  for mode in ('inference', 'batch', 'training'):
    classifier = bn_classifier()
    classifier.get_layer('bn').moving_mean.assign([0.5, -0.5, 0.3, 0.1])  # != batch statistics
    config = defenses.DefenseConfig(defense='madry', aad=True, attention_mode=mode,
                                    gradcam_normalize='max', kappa=0.2)
    model = defenses.AADModel(classifier, 'gradcam', config)
    terms[mode] = model.loss_terms(x, y, x_adv)
    assert classifier.get_layer('bn').momentum == 0.9
  for name in ('rect', 'pres', 'cam', 'adv_cam'):
    batch, training = (getattr(terms[m], name).numpy() for m in ('batch', 'training'))
    np.testing.assert_allclose(batch, training, rtol=1e-5, atol=1e-6, err_msg=name)
  assert not np.allclose(terms['batch'].cam.numpy(), terms['inference'].cam.numpy(), atol=1e-3)
  # The base loss's logits come from its own pass in 'batch' (as in 'inference').
  np.testing.assert_allclose(terms['batch'].base.numpy(), terms['inference'].base.numpy(),
                             rtol=1e-5)


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


def make(defense_name='madry', aad=True, **kwargs):
  keras.utils.set_random_seed(0)
  classifier = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  config = defenses.DefenseConfig(defense=defense_name, aad=aad,
                                 attack=defenses.AttackConfig(step_size=0.1, num_steps=2),
                                 **kwargs)
  model = defenses.AADModel(classifier, 'gradcam', config)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  return model


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


# ---------------------------------------------------------------------------------------------
# One training step per single-step / TRADES family, with and without AAD.

@pytest.fixture(scope='module')
def static_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('static') / 'static.keras')
  tiny_classifier(seed=7).save(path)
  return path


def family_hparams(name, static_path):
  """R+Step-LL's random step for the single-step families; ensemble's static model."""
  if name == 'trades':
    return None
  hparams = {'stepll_random_step': 0.5}
  if name == 'ensemble':
    hparams['ensemble_models'] = (static_path,)
  return hparams


@pytest.mark.parametrize('aad', [False, True], ids=['plain', 'aad'])
@pytest.mark.parametrize('name', ['stepll', 'ensemble', 'trades'])
def test_one_train_step_updates_weights_with_finite_losses(name, aad, static_path):
  attack = defenses.AttackConfig(eps=EPS, step_size=0.1, num_steps=2)
  config = defenses.DefenseConfig(
      defense=name, aad=aad, attack=attack, hparams=family_hparams(name, static_path))
  classifier = tiny_classifier(seed=11)
  model = defenses.AADModel(classifier, 'gradcam', config)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in classifier.trainable_weights]
  x = images(n=8, seed=4)
  y = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
  history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
  logs = {k: v[-1] for k, v in history.history.items()}
  expected = {'loss', 'class_loss', 'clean_acc', 'adv_acc'}
  expected |= {'kl_loss'} if name == 'trades' else set()
  expected |= {'rect_loss', 'pres_loss'} if aad else set()
  assert expected <= set(logs), logs
  assert all(np.isfinite(v) for v in logs.values()), logs
  changed = [not np.allclose(b, a.numpy()) for b, a in zip(before, classifier.trainable_weights)]
  assert all(changed)
  assert int(model.optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize('name', ['stepll', 'ensemble', 'trades'])
def test_train_step_under_eps_warmup(name, static_path):
  # During a warm-up eps is a tensor inside the compiled step: no Python branching on it.
  attack = defenses.AttackConfig(eps=EPS, step_size=0.1, num_steps=2, warmup_steps=4)
  config = defenses.DefenseConfig(
      defense=name, attack=attack, hparams=family_hparams(name, static_path))
  model = defenses.AADModel(tiny_classifier(seed=2), 'gradcam', config, seed=1)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  history = model.fit(images(n=8, seed=6), np.arange(8) % CLASSES, batch_size=4, epochs=1,
                      verbose=0)
  assert all(np.isfinite(v[-1]) for v in history.history.values())
  assert int(model.optimizer.iterations.numpy()) == 2


# ---------------------------------------------------------------------------------------------
# What the model tells its callers: metric names, the summaries' view.

@pytest.mark.parametrize('name, aad, expected', [
    ('madry', False, ('loss', 'class_loss')),
    ('alp', True, ('loss', 'class_loss', 'pair_loss', 'rect_loss', 'pres_loss')),
    ('trades', False, ('loss', 'class_loss', 'kl_loss')),
])
def test_metric_names_are_the_defenses_own(name, aad, expected):
  model = make(name, aad)
  assert model.metric_names == expected
  assert [m.name for m in model.metrics] == [*expected, 'clean_acc', 'adv_acc']


def test_summary_spec_names_classifier_layer_attack_and_aad():
  model = make('madry', True)
  spec = model.summary_spec()
  assert spec.classifier is model.classifier and spec.gradcam_layer == 'gradcam'
  assert spec.attack == model.config.attack and spec.aad


def test_a_loss_part_the_defense_does_not_declare_is_refused(batch):
  class Undeclared(defenses.BaseDefense):
    def loss(self, y, clean_logits, adv_logits, config):
      lc = losses.classification(y, adv_logits, config.classification_loss)
      return lc, {'class_loss': lc, 'extra_loss': lc}

  defenses.register_defense('undeclared_test', Undeclared())
  try:
    model = make('undeclared_test', False)
    with pytest.raises(ValueError, match='extra_loss'):
      model.train_step(batch)
  finally:
    defenses.unregister_defense('undeclared_test')


# Issue 25: AAD under the mixed_bfloat16 policy keeps its noise-free property, and its maps,
# masks and diagnostics are float32.

def bf16_lenet_model(**kwargs):
  with precision.dtype_policy('mixed_bfloat16'):
    model = lenet_model(**kwargs)
  assert model.classifier.get_layer('conv1').compute_dtype == 'bfloat16'
  return model


def test_noise_free_terms_hold_under_mixed_bfloat16(batch):
  x, y = batch
  model = bf16_lenet_model(eps=0.0)
  terms = model.loss_terms(x, y, x)  # x_adv = x
  assert terms.cam.dtype == terms.adv_cam.dtype == terms.area.dtype == tf.float32
  assert terms.pres.dtype == terms.rect.dtype == tf.float32
  np.testing.assert_array_equal(terms.pres.numpy(), 0.0)  # L_p(x, x) = 0 exactly
  logs = tf.function(model.train_step)(batch)  # and inside the compiled train step
  assert float(logs['pres_loss']) == 0.0
  # An unmasked image (a threshold no cell reaches: empty attention area, x_m = x): the
  # rectification distance is 0, only the epsilon of the L2 norm remains, in each half.
  unmasked = bf16_lenet_model(eps=0.0, kappa=1e9)
  terms = unmasked.loss_terms(x, y, x)
  np.testing.assert_array_equal(terms.area.numpy(), 0.0)
  np.testing.assert_array_equal(terms.rect.numpy(), 2 * -np.sqrt(np.float32(1e-12)))
  logs = tf.function(unmasked.train_step)(batch)
  assert float(logs['rect_loss']) == 2 * -np.sqrt(np.float32(1e-12))


def test_inference_gap_sees_moving_statistics_that_do_not_fit_the_weights():
  from aad_tf.models import batchnorm
  # Images of rising brightness, which this BatchNorm network tells apart (two classes).
  ramp = np.linspace(0, 1, 12, dtype=np.float32)[:, None, None, None]
  x = tf.constant(0.8 * ramp + 0.2 * images(12, seed=3))
  classifier = bn_classifier(seed=5)
  # Labels the training-mode network gets right; eps 0: x_adv = x, so the base loss's training
  # pass classifies all of them.
  y = tf.argmax(classifier(x, training=True), axis=-1, output_type=tf.int32)
  config = defenses.DefenseConfig(defense='madry', aad=True, alpha=0.1, beta=0.1,
                                  attack=defenses.AttackConfig(eps=0.0, step_size=0.1,
                                                               num_steps=1))
  model = defenses.AADModel(classifier, 'gradcam', config)
  model.compile(optimizer=keras.optimizers.SGD(0.1))
  bn = classifier.get_layer('bn')
  batchnorm.recalibrate(classifier, x.numpy(), batch_size=12)  # moving stats = x's statistics
  assert float(model.aad_diagnostics(x, y)['inference_gap']) == 0.0
  # Moving statistics that no longer fit: means 3 sd off, variances 20x too small.
  shift = 3.0 * np.sqrt(bn.moving_variance.numpy()) * np.array([1, -1, 1, -1], np.float32)
  bn.moving_mean.assign(bn.moving_mean + shift)
  bn.moving_variance.assign(bn.moving_variance * 0.05)
  stale = float(model.aad_diagnostics(x, y)['inference_gap'])
  inference = tf.argmax(classifier(x, training=False), axis=-1, output_type=tf.int32)
  assert stale > 0.2
  np.testing.assert_allclose(stale, 1.0 - float(tf.reduce_mean(tf.cast(inference == y,
                                                                          tf.float32))), atol=0.1)


def test_diagnostics_under_mixed_bfloat16_are_float32(batch):
  x, y = batch
  model = bf16_lenet_model(gradcam_normalize='max')
  values = model.aad_diagnostics(x, y)
  assert all(v.dtype == tf.float32 for v in values.values()), {
      k: v.dtype for k, v in values.items()}
  cam, _ = gradcam.gradcam(model.features.fn(training=False), x, y, normalize='max')
  assert cam.dtype == tf.float32
  np.testing.assert_allclose(float(values['map_mean']), np.mean(cam.numpy().astype(np.float64)),
                             rtol=1e-6)
  np.testing.assert_allclose(float(values['map_max']),
                             np.mean(cam.numpy().astype(np.float64).max(axis=(1, 2))), rtol=1e-6)
  assert 0.0 < float(values['area_fraction']) < 1.0 and float(values['grad_norm_class']) > 0
