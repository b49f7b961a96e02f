"""Tests of the ResNet9 and ImageNet backbones: structure, heads against NumPy, Grad-CAM layers,
local pretrained weights, mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf import gradcam
from aad_tf import models
from aad_tf.models import imagenet
from aad_tf.models import resnet9


def conv_bn_params(k, c_in, c_out):
  return k * k * c_in * c_out + 4 * c_out  # no conv bias; BN gamma, beta, mean, variance


def test_resnet9_parameter_count_matches_the_architecture():
  model = models.get_model('resnet9', input_shape=(32, 32, 3), num_classes=10)
  expected = (conv_bn_params(3, 3, 64) + conv_bn_params(3, 64, 128) +
              2 * conv_bn_params(3, 128, 128) + conv_bn_params(3, 128, 256) +
              conv_bn_params(3, 256, 512) + 2 * conv_bn_params(3, 512, 512) + 512 * 10)
  assert model.count_params() == expected == 6_577_600
  assert models.get_spec('resnet9').gradcam_layer == resnet9.GRADCAM_LAYER


def test_resnet9_head_and_gradcam_layer_against_numpy():
  model = models.get_model('resnet9', input_shape=(32, 32, 3), num_classes=10, width=8)
  features = gradcam.FeatureModel(model, 'gradcam')
  assert features.grid_shape == (4, 4)
  x = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
  fmap, logits = features(x)
  kernel = model.get_layer('fc').kernel.numpy()
  want = 0.125 * fmap.numpy().max(axis=(1, 2)) @ kernel  # global max pool, fc, x 0.125
  np.testing.assert_allclose(logits.numpy(), want, rtol=1e-5, atol=1e-6)
  assert fmap.shape == (3, 4, 4, 64)


def test_resnet9_batch_norm_is_synchronized():
  model = models.get_model('resnet9', input_shape=(32, 32, 3), num_classes=10, width=4)
  norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert len(norms) == 8 and all(l.synchronized for l in norms)


@pytest.mark.parametrize('kwargs, shape, match', [
    ({}, (30, 30, 3), 'divisible by 8'), ({'width': 0}, (32, 32, 3), 'width')])
def test_resnet9_rejects_bad_arguments(kwargs, shape, match):
  with pytest.raises(ValueError, match=match):
    models.get_model('resnet9', input_shape=shape, num_classes=10, **kwargs)


def test_resnet9_logits_are_float32_under_mixed_precision():
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy('mixed_bfloat16')
  try:
    model = models.get_model('resnet9', input_shape=(32, 32, 3), num_classes=10, width=4)
  finally:
    keras.config.set_dtype_policy(previous)
  assert model.get_layer('layer3_conv').compute_dtype == 'bfloat16'
  assert model.get_layer('layer3_conv').kernel.dtype == 'float32'
  logits = model(np.zeros((2, 32, 32, 3), np.float32))
  assert logits.dtype == tf.float32


@pytest.fixture(scope='module')
def resnet50():
  return models.get_model('resnet50', input_shape=(64, 64, 3), num_classes=7)


def test_resnet50_is_flat_with_its_gradcam_layer(resnet50):
  assert not any(isinstance(layer, keras.Model) for layer in resnet50.layers)
  layer = resnet50.get_layer(imagenet.RESNET50_GRADCAM_LAYER)
  assert tuple(layer.output.shape[1:]) == (2, 2, 2048)
  bottlenecks = [l for l in resnet50.layers if l.name.endswith('_out')]
  assert len(bottlenecks) == 3 + 4 + 6 + 3  # ResNet50's [3, 4, 6, 3] blocks
  assert resnet50.count_params() == resnet50_parameters(num_classes=7)


def resnet50_parameters(num_classes):
  """He et al.'s ResNet50 v1 (bottlenecks [3, 4, 6, 3], convolutions without bias) + fc."""
  total = conv_bn_params(7, 3, 64)
  channels = 64
  for filters, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
    for block in range(blocks):
      if block == 0:  # projection shortcut
        total += conv_bn_params(1, channels, 4 * filters)
      total += (conv_bn_params(1, channels, filters) + conv_bn_params(3, filters, filters) +
                conv_bn_params(1, filters, 4 * filters))
      channels = 4 * filters
  return total + 2048 * num_classes + num_classes


def test_resnet50_head_against_numpy(resnet50):
  features = gradcam.FeatureModel(resnet50, imagenet.RESNET50_GRADCAM_LAYER)
  x = np.random.default_rng(1).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  fmap, logits = features(x)
  dense = resnet50.get_layer('logits')
  want = fmap.numpy().mean(axis=(1, 2)) @ dense.kernel.numpy() + dense.bias.numpy()
  np.testing.assert_allclose(logits.numpy(), want, rtol=1e-4, atol=1e-5)
  cam, _ = gradcam.gradcam(features.fn(), x, np.array([0, 3]))
  assert cam.shape == (2, 2, 2)


def test_resnet50_loads_local_backbone_weights(tmp_path, resnet50):
  # The backbone of `resnet50` stands in for downloaded weights: save it, rebuild from the file.
  backbone = keras.Model(resnet50.input,
                         resnet50.get_layer(imagenet.RESNET50_GRADCAM_LAYER).output)
  path = str(tmp_path / 'backbone.weights.h5')
  backbone.save_weights(path)
  rebuilt = models.get_model('resnet50', input_shape=(64, 64, 3), num_classes=3,
                             pretrained_weights=path)
  for name in ('conv1_conv', 'v2_stack_3_block3_3_conv', 'v2_stack_3_block3_3_bn'):
    for want, got in zip(resnet50.get_layer(name).weights, rebuilt.get_layer(name).weights):
      np.testing.assert_array_equal(got.numpy(), want.numpy())
  assert rebuilt.get_layer('logits').kernel.shape == (2048, 3)  # fresh head for 3 classes


def test_pretrained_weights_must_be_a_local_file(tmp_path):
  with pytest.raises(ValueError, match='not a file'):
    models.get_model('resnet50', input_shape=(64, 64, 3), num_classes=3,
                     pretrained_weights=str(tmp_path / 'missing.weights.h5'))


def test_inception_v3_rescales_inputs_and_loads_its_weights(tmp_path):
  model = models.get_model('inception_v3', input_shape=(75, 75, 3), num_classes=5)
  assert models.get_spec('inception_v3').gradcam_layer == 'mixed10'
  assert tuple(model.get_layer('mixed10').output.shape[1:]) == (1, 1, 2048)
  x = np.random.default_rng(2).uniform(size=(2, 75, 75, 3)).astype(np.float32)
  scaled = keras.Model(model.input, model.get_layer('to_inception_range').output)(x)
  np.testing.assert_allclose(scaled.numpy(), 2 * x - 1, atol=1e-6)
  path = str(tmp_path / 'inception.weights.h5')
  model.save_weights(path)
  rebuilt = models.get_model('inception_v3', input_shape=(75, 75, 3), num_classes=5,
                             pretrained_weights=path)
  np.testing.assert_allclose(rebuilt(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_aad_training_step_runs_in_mixed_bfloat16(tmp_path):
  from aad_tf import defenses, training  # pylint: disable=g-import-not-at-top
  config = training.TrainConfig(
      model_dir=str(tmp_path), dataset='cifar10', model='resnet9', batch_size=4,
      mixed_precision=True, defense=defenses.DefenseConfig(
          defense='madry', aad=True,
          attack=defenses.AttackConfig(eps=8 / 255, step_size=2 / 255, num_steps=1)))
  model = training.build_model(config, num_train=100)
  assert keras.config.dtype_policy().name == 'float32'  # the global policy is restored
  assert model.classifier.get_layer('layer1_conv').compute_dtype == 'bfloat16'
  assert all(v.dtype == 'float32' for v in model.trainable_variables)
  before = [v.numpy() for v in model.classifier.trainable_weights]
  x = np.random.default_rng(5).uniform(size=(1, 4, 32, 32, 3)).astype(np.float32)
  y = np.arange(4, dtype=np.int32)[None]
  history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)), epochs=1, verbose=0).history
  for name in ('loss', 'rect_loss', 'pres_loss'):
    assert np.isfinite(history[name][0]), name
  assert any(not np.array_equal(b, v.numpy())
             for b, v in zip(before, model.classifier.trainable_weights))


@pytest.fixture(scope='module')
def resnet50_keras_applications():
  return models.get_model('resnet50_keras_applications', input_shape=(64, 64, 3), num_classes=7)


def test_resnet50_sources_name_registered_builders():
  assert imagenet.RESNET_SOURCES == {'keras_cv': 'resnet50',
                                     'keras_applications': 'resnet50_keras_applications'}
  assert (models.get_spec('resnet50_keras_applications').gradcam_layer ==
          imagenet.RESNET50_KERAS_APPLICATIONS_GRADCAM_LAYER == 'conv5_block3_out')


def test_resnet50_keras_applications_is_flat_with_its_gradcam_layer(resnet50_keras_applications):
  model = resnet50_keras_applications
  assert not any(isinstance(layer, keras.Model) for layer in model.layers)
  layer = model.get_layer(imagenet.RESNET50_KERAS_APPLICATIONS_GRADCAM_LAYER)
  assert tuple(layer.output.shape[1:]) == (2, 2, 2048)
  assert len([l for l in model.layers if l.name.endswith('_out')]) == 3 + 4 + 6 + 3
  # keras.applications' convolutions carry a bias: one more parameter per output channel.
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  assert len(convs) == 53 and all(l.use_bias for l in convs)
  biases = sum(l.filters for l in convs)
  assert model.count_params() == resnet50_parameters(num_classes=7) + biases
  norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert len(norms) == 53 and all(l.synchronized for l in norms)


def test_resnet50_keras_applications_head_against_numpy(resnet50_keras_applications):
  features = gradcam.FeatureModel(resnet50_keras_applications,
                                  imagenet.RESNET50_KERAS_APPLICATIONS_GRADCAM_LAYER)
  x = np.random.default_rng(3).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  fmap, logits = features(x)
  dense = resnet50_keras_applications.get_layer('logits')
  want = fmap.numpy().mean(axis=(1, 2)) @ dense.kernel.numpy() + dense.bias.numpy()
  np.testing.assert_allclose(logits.numpy(), want, rtol=1e-4, atol=1e-5)
  cam, _ = gradcam.gradcam(features.fn(), x, np.array([1, 6]))
  assert cam.shape == (2, 2, 2)


def test_resnet50_keras_applications_loads_local_backbone_weights(tmp_path,
                                                                  resnet50_keras_applications):
  model = resnet50_keras_applications
  backbone = keras.Model(model.input,
                         model.get_layer(imagenet.RESNET50_KERAS_APPLICATIONS_GRADCAM_LAYER).output)
  path = str(tmp_path / 'backbone.weights.h5')
  backbone.save_weights(path)
  rebuilt = models.get_model('resnet50_keras_applications', input_shape=(64, 64, 3),
                             num_classes=3, pretrained_weights=path)
  for name in ('conv1_conv', 'conv5_block3_3_conv', 'conv5_block3_3_bn'):
    for want, got in zip(model.get_layer(name).weights, rebuilt.get_layer(name).weights):
      np.testing.assert_array_equal(got.numpy(), want.numpy())
  assert rebuilt.get_layer('logits').kernel.shape == (2048, 3)
  with pytest.raises(ValueError, match='at least 32x32'):
    models.get_model('resnet50_keras_applications', input_shape=(16, 16, 3), num_classes=3)
