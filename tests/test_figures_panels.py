"""Tests for aad_tf.figures.panels: example choice, Grad-CAM panels against a direct Grad-CAM."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf import defenses as defense_lib
from aad_tf import figures


from figure_models import ATTACK, images, tiny_classifier  # noqa: F401


def reference_cam(classifier, layer, x, y):
  """Grad-CAM written out directly: ReLU(sum_k mean_ij(d z_y / d A^k) A^k), bilinear, / max."""
  body = keras.Model(classifier.inputs, classifier.get_layer(layer).output)
  head_layers = classifier.layers[classifier.layers.index(classifier.get_layer(layer)) + 1:]
  x = tf.constant(x)
  activations = body(x)
  with tf.GradientTape() as tape:
    tape.watch(activations)
    h = activations
    for layer_ in head_layers:
      h = layer_(h)
    score = tf.reduce_sum(h * tf.one_hot(y, h.shape[-1]))
  grads = tape.gradient(score, activations).numpy().astype(np.float64)
  acts = activations.numpy().astype(np.float64)
  cam = np.maximum((grads.mean(axis=(1, 2), keepdims=True) * acts).sum(-1), 0.0)
  cam = cam / (cam.max(axis=(1, 2), keepdims=True) + 1e-12)
  return tf.image.resize(cam[..., None].astype(np.float32), (28, 28), 'bilinear')[..., 0].numpy()


def test_pick_examples_cycles_through_classes():
  labels = np.array([3, 1, 1, 0, 3, 2, 0, 2])
  np.testing.assert_array_equal(figures.pick_examples(labels, 6), [3, 1, 5, 0, 6, 2])
  with pytest.raises(ValueError, match='num must be'):
    figures.pick_examples(labels, 9)


def test_panel_maps_match_a_direct_gradcam_and_the_attack_is_bounded():
  classifier = tiny_classifier()
  x, y = images()
  panel = figures.PanelMaker(classifier, 'cam', ATTACK)(x, y)
  np.testing.assert_allclose(panel.cams, reference_cam(classifier, 'cam', x, y), atol=1e-5)
  np.testing.assert_allclose(panel.adv_cams, reference_cam(classifier, 'cam', panel.adv_images, y),
                             atol=1e-5)
  probs = tf.nn.softmax(classifier(x)).numpy()
  np.testing.assert_allclose(panel.probs, probs, atol=1e-6)
  assert np.abs(panel.adv_images - x).max() <= ATTACK.eps + 1e-6
  assert panel.adv_images.min() >= 0 and panel.adv_images.max() <= 1
  assert np.abs(panel.adv_images - x).max() > 0.05
  assert panel.attack == 'PGD-3 eps=0.3'
  # A fixed random start: the same weights give the same panel.
  again = figures.PanelMaker(classifier, 'cam', ATTACK)(x, y)
  np.testing.assert_array_equal(again.adv_images, panel.adv_images)


def test_panel_explains_prediction_and_eps_zero_is_clean():
  classifier = tiny_classifier()
  x, y = images()
  panel = figures.PanelMaker(classifier, 'cam', defense_lib.AttackConfig(eps=0.0, num_steps=2),
                             explain='prediction')(x, y)
  predicted = panel.predictions.astype(np.int32)
  np.testing.assert_allclose(panel.cams, reference_cam(classifier, 'cam', x, predicted), atol=1e-5)
  np.testing.assert_array_equal(panel.adv_images, x)
  np.testing.assert_allclose(panel.adv_probs, panel.probs, atol=1e-6)


def test_panel_maker_rejects_bad_arguments():
  classifier = tiny_classifier()
  with pytest.raises(ValueError, match='explain'):
    figures.PanelMaker(classifier, 'cam', ATTACK, explain='both')
  with pytest.raises(ValueError, match='not a layer'):
    figures.PanelMaker(classifier, 'nope', ATTACK)
  with pytest.raises(ValueError, match='labels'):
    figures.PanelMaker(classifier, 'cam', ATTACK)(*images()[:1], np.zeros([3]))
