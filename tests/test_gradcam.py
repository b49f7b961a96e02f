"""Grad-CAM against a NumPy reference; second-order gradients against float64 finite differences."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf import gradcam
from aad_tf import losses
from aad_tf import precision


def small_model(dtype='float32', seed=0, size=6, channels=3, classes=4):
  """conv(3x3, 5) -> ReLU [gradcam] -> flatten -> dense(7, tanh) -> dense(classes)."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((size, size, channels), dtype=dtype)
  h = keras.layers.Conv2D(5, 3, padding='same', dtype=dtype, name='conv')(inputs)
  h = keras.layers.ReLU(dtype=dtype, name='gradcam')(h)
  h = keras.layers.Flatten(dtype=dtype)(h)
  h = keras.layers.Dense(7, activation='tanh', dtype=dtype, name='hidden')(h)
  logits = keras.layers.Dense(classes, dtype=dtype, name='head')(h)
  return keras.Model(inputs, logits)


def numpy_gradcam(model, x, labels, normalize='none'):
  """Reference: features from the model, d logit_c / d A by hand for the flatten-tanh-dense head.

  normalize: 'none', 'max' (map / its maximum) or 'rms_softmax' (the authors' TF1 code, RMS per
  image: alpha from d_a / rms(d_a), no ReLU, softmax over the cells).
  """
  features = keras.Model(model.inputs, model.get_layer('gradcam').output)(x).numpy()
  w1, b1 = [v.numpy().astype(np.float64) for v in model.get_layer('hidden').weights]
  w2, _ = [v.numpy().astype(np.float64) for v in model.get_layer('head').weights]
  cams = []
  for a, c in zip(features.astype(np.float64), labels):
    pre = a.reshape(-1) @ w1 + b1
    d_hidden = w2[:, c] * (1 - np.tanh(pre) ** 2)         # d logit_c / d hidden
    d_a = (w1 @ d_hidden).reshape(a.shape)               # d logit_c / d A  [h, w, K]
    if normalize == 'rms_softmax':
      d_a = d_a / (np.sqrt(np.mean(d_a ** 2)) + 1e-5)
    alpha = d_a.mean(axis=(0, 1))                        # [K]
    weighted = (a * alpha).sum(-1)
    if normalize == 'rms_softmax':
      e = np.exp(weighted - weighted.max())
      cams.append(e / e.sum())
      continue
    cam = np.maximum(weighted, 0.0)
    cams.append(cam / (cam.max() + 1e-12) if normalize == 'max' else cam)
  return np.stack(cams)


def test_gradcam_matches_numpy_reference_per_image():
  model = small_model()
  x = np.random.default_rng(1).random((5, 6, 6, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 1], np.int32)
  cam, logits = gradcam.gradcam(gradcam.FeatureModel(model, 'gradcam').fn(), x, labels)
  np.testing.assert_allclose(cam.numpy(), numpy_gradcam(model, x, labels), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(logits.numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('normalize', ['max', 'rms_softmax'])
def test_scaled_gradcam_matches_numpy_reference(normalize):
  model = small_model()
  x = np.random.default_rng(1).random((5, 6, 6, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 1], np.int32)
  fn = gradcam.FeatureModel(model, 'gradcam').fn()
  cam, _ = gradcam.gradcam(fn, x, labels, normalize=normalize)
  expected = numpy_gradcam(model, x, labels, normalize)
  np.testing.assert_allclose(cam.numpy(), expected, rtol=1e-4, atol=1e-6)
  raw, _ = gradcam.gradcam(fn, x, labels)
  assert not np.allclose(cam.numpy(), raw.numpy(), atol=1e-3)
  if normalize == 'max':
    peaks = cam.numpy().max(axis=(1, 2))  # 1, or 0 for a map that ReLU zeroes entirely
    assert np.all(np.isclose(peaks, 1.0, rtol=1e-5) | (peaks == 0)) and np.any(peaks > 0.5)
  else:
    np.testing.assert_allclose(cam.numpy().sum(axis=(1, 2)), 1.0, rtol=1e-5)
    # Per-image RMS: an image's map does not depend on its batch companions.
    single, _ = gradcam.gradcam(fn, x[3:4], labels[3:4], normalize=normalize)
    np.testing.assert_allclose(single.numpy()[0], cam.numpy()[3], rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match='normalize'):
    gradcam.gradcam(fn, x, labels, normalize='l2')


def test_gradcam_default_label_is_prediction_and_batch_independent():
  model = small_model()
  x = np.random.default_rng(2).random((4, 6, 6, 3)).astype(np.float32)
  fn = gradcam.FeatureModel(model, 'gradcam').fn()
  cam, logits = tf.function(lambda images: gradcam.gradcam(fn, images))(x)
  predicted = logits.numpy().argmax(-1)
  np.testing.assert_allclose(cam.numpy(), numpy_gradcam(model, x, predicted), rtol=1e-4,
                             atol=1e-6)
  single, _ = gradcam.gradcam(fn, x[2:3], predicted[2:3])
  np.testing.assert_allclose(single.numpy()[0], cam.numpy()[2], rtol=1e-5, atol=1e-7)


def test_gradcam_inside_tf_function_traces_once():
  model = small_model()
  features = gradcam.FeatureModel(model, 'gradcam')
  traces = []

  @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 3]), tf.TensorSpec([None], tf.int32)])
  def compiled(x, y):
    traces.append(1)
    return gradcam.gradcam(features.fn(), x, y)[0]

  for n in (2, 3):
    out = compiled(tf.random.uniform([n, 6, 6, 3]), tf.zeros([n], tf.int32))
    assert out.shape == (n, 6, 6)
  assert len(traces) == 1


def test_opaque_feature_function_is_a_clear_error():
  fn = tf.function(gradcam.FeatureModel(small_model(), 'gradcam').fn())
  with pytest.raises(ValueError, match='do not wrap feature_fn'):
    gradcam.gradcam(fn, tf.random.uniform([2, 6, 6, 3]))


def test_feature_model_rejects_unknown_or_flat_layer():
  model = small_model()
  with pytest.raises(ValueError, match='not a layer'):
    gradcam.FeatureModel(model, 'nope')
  with pytest.raises(ValueError, match=r'\[B, h, w, K\]'):
    gradcam.FeatureModel(model, 'hidden')


def finite_difference(f, variable, index, h=1e-6):
  original = variable.numpy()
  bumped = original.copy()
  bumped[index] += h
  variable.assign(bumped)
  up = f()
  bumped[index] -= 2 * h
  variable.assign(bumped)
  down = f()
  variable.assign(original)
  return (up - down) / (2 * h)


@pytest.mark.parametrize('layer_name, normalize', [
    ('head', 'none'), ('hidden', 'none'), ('conv', 'none'), ('hidden', 'max'),
    ('conv', 'rms_softmax'), ('head', 'rms_softmax')])
def test_preservation_gradient_matches_float64_finite_differences(layer_name, normalize):
  """d L_p / d W through Grad-CAM (second order), including the classifier head and scalings."""
  model = small_model(dtype='float64', seed=3)
  features = gradcam.FeatureModel(model, 'gradcam').fn()
  rng = np.random.default_rng(4)
  x = rng.random((3, 6, 6, 3))
  x_adv = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1)
  y = np.array([0, 2, 3], np.int32)

  def loss():
    cam, _ = gradcam.gradcam(features, x, y, normalize=normalize)
    adv_cam, _ = gradcam.gradcam(features, x_adv, y, normalize=normalize)
    return float(tf.reduce_mean(losses.preservation(cam, adv_cam)).numpy())

  kernel = model.get_layer(layer_name).kernel
  with tf.GradientTape() as tape:
    cam, _ = gradcam.gradcam(features, x, y, normalize=normalize)
    adv_cam, _ = gradcam.gradcam(features, x_adv, y, normalize=normalize)
    value = tf.reduce_mean(losses.preservation(cam, adv_cam))
  grad = tape.gradient(value, kernel).numpy()
  assert np.abs(grad).max() > 0, 'no gradient reached the layer through Grad-CAM'
  flat = np.argsort(-np.abs(grad).ravel())[:4]  # the largest entries, plus a random one
  flat = np.append(flat, rng.integers(grad.size))
  for i in flat:
    index = np.unravel_index(i, grad.shape)
    np.testing.assert_allclose(grad[index], finite_difference(loss, kernel, index),
                               rtol=1e-5, atol=1e-9)


def test_attention_area_mean_fixed_and_top_k():
  cam = tf.constant([[[0., 1.], [2., 5.]], [[3., 3.], [3., 3.]]])
  # Mean 2; the second map has no contrast (every cell equal), so its area is empty.
  np.testing.assert_array_equal(gradcam.attention_area(cam).numpy(),
                                [[[0, 0], [1, 1]], [[0, 0], [0, 0]]])
  np.testing.assert_array_equal(gradcam.attention_area(cam, kappa=2.5).numpy(),
                                [[[0, 0], [0, 1]], [[0, 0], [0, 0]]])
  top = gradcam.attention_area(cam, top_k=3).numpy()
  np.testing.assert_array_equal(top.sum(axis=(1, 2)), [3, 3])  # exactly k, ties included
  np.testing.assert_array_equal(top[0], [[0, 1], [1, 1]])
  per_image = gradcam.attention_area(cam, top_k=tf.constant([1, 4])).numpy()
  np.testing.assert_array_equal(per_image.sum(axis=(1, 2)), [1, 4])
  np.testing.assert_array_equal(per_image[0], [[0, 0], [0, 1]])
  with pytest.raises(ValueError, match='kappa'):
    gradcam.attention_area(cam, kappa='median')


def test_mask_attention_blanks_the_upsampled_attention_area():
  cam = tf.constant([[[0., 4.], [0., 0.]]])  # mean 1: only the top-right cell is attended
  x = tf.ones([1, 4, 4, 2])
  masked = gradcam.mask_attention(x, cam).numpy()
  expected = np.ones([4, 4])
  expected[:2, 2:] = 0
  for c in range(2):
    np.testing.assert_array_equal(masked[0, ..., c], expected)
  np.testing.assert_allclose(gradcam.normalize_cam(cam).numpy().max(), 1.0, rtol=1e-6)


# Issue 25: under the mixed_bfloat16 policy the maps, thresholds and distances are float32.

def bf16_features_and_grads(model, x, labels):
  """The bfloat16 features and d logit_c / d features that gradcam sees, as float64 arrays."""
  fn = gradcam.FeatureModel(model, 'gradcam')
  with tf.GradientTape() as tape:
    features, logits = fn(x)
    score = tf.reduce_sum(tf.gather(logits, labels, batch_dims=1))
  grads = tape.gradient(score, features)
  assert features.dtype == grads.dtype == tf.bfloat16
  return features.numpy().astype(np.float64), grads.numpy().astype(np.float64)


@pytest.mark.parametrize('normalize', gradcam.NORMALIZATIONS)
def test_gradcam_of_a_bfloat16_model_is_computed_in_float32(normalize):
  with precision.dtype_policy('mixed_bfloat16'):
    model = small_model(dtype=None, seed=2)
  x = np.random.default_rng(3).random((5, 6, 6, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 1], np.int32)
  cam, _ = gradcam.gradcam(gradcam.FeatureModel(model, 'gradcam').fn(), x, labels,
                           normalize=normalize)
  assert cam.dtype == tf.float32
  # The float64 map of the same bfloat16 features and gradients: everything after them (alpha,
  # the weighted sum, the scaling) is float32, so it agrees to float32 precision, where a
  # bfloat16 map would be off by about 2^-8.
  a, g = bf16_features_and_grads(model, x, labels)
  if normalize == 'rms_softmax':
    g = g / (np.sqrt(np.mean(g ** 2, axis=(1, 2, 3), keepdims=True)) + gradcam.RMS_EPSILON)
  weighted = (a * g.mean(axis=(1, 2), keepdims=True)).sum(-1)
  if normalize == 'rms_softmax':
    e = np.exp(weighted - weighted.max(axis=(1, 2), keepdims=True))
    expected = e / e.sum(axis=(1, 2), keepdims=True)
  else:
    expected = np.maximum(weighted, 0)
    if normalize == 'max':
      expected = expected / (expected.max(axis=(1, 2), keepdims=True) + gradcam.MAX_EPSILON)
  scale = np.abs(expected).max()
  np.testing.assert_allclose(cam.numpy(), expected, rtol=1e-5, atol=1e-6 * scale)


def test_bfloat16_map_is_normalised_and_thresholded_in_float32():
  # The mean of these cells is 1 + 2^-9; in bfloat16 it rounds to 1.0, and all four cells
  # would pass the mean threshold instead of the one above it.
  cam = tf.constant([[[1.0, 1.0], [1.0, 1.0 + 2 ** -7]]], tf.bfloat16)
  area = gradcam.attention_area(cam)
  assert area.dtype == tf.float32
  np.testing.assert_array_equal(area.numpy(), [[[0, 0], [0, 1]]])
  maps = tf.cast(tf.random.stateless_uniform([3, 7, 7], [1, 2], 0.1, 3.0), tf.bfloat16)
  reference = maps.numpy().astype(np.float64)
  normalised = gradcam.normalize_cam(maps)
  assert normalised.dtype == tf.float32
  np.testing.assert_allclose(normalised.numpy(),
                             reference / reference.max(axis=(1, 2), keepdims=True), rtol=1e-6)


def test_map_distance_of_bfloat16_maps_is_float32():
  a = tf.cast(tf.random.stateless_uniform([2, 7, 7], [1, 2]), tf.bfloat16)
  b = tf.cast(tf.random.stateless_uniform([2, 7, 7], [3, 2]), tf.bfloat16)
  distance = gradcam.map_distance(a, b)
  assert distance.dtype == tf.float32
  expected = np.abs(a.numpy().astype(np.float64) - b.numpy().astype(np.float64)).sum(axis=(1, 2))
  np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-6)  # bfloat16 sums: ~1e-3 off
  np.testing.assert_array_equal(gradcam.map_distance(a, a).numpy(), 0.0)
