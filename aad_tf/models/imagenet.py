"""ImageNet backbones: ResNet50 (keras-cv, or keras.applications) for training, InceptionV3
(keras.applications) for analysis.

This is the only module that imports keras-cv, so the backbone source can be swapped here:
`resnet50` is keras-cv's (the design card's choice, the default), `resnet50_keras_applications`
the same architecture from `keras.applications` (no keras-cv; keras-cv is frozen upstream, no
release since 0.9.0). `RESNET_SOURCES` maps trainers' `--resnet_source` to the registry name.
Every builder returns a flat functional classifier (images in [0, 1] -> logits) whose Grad-CAM
layer is one of its own layers, as `aad_tf.gradcam.FeatureModel` requires. Nothing is ever
downloaded: the networks are built from explicit configurations, and pretrained weights come from
a local file (`pretrained_weights`).

ResNet50 (He et al. 2016, v1 bottleneck blocks [3, 4, 6, 3]): keras-cv's `ResNetBackbone` without
input rescaling (inputs are already in [0, 1], as for keras-cv's ImageNet presets, which rescale
0-255 inputs by 1/255), then global average pooling and a float32 fc layer. Grad-CAM layer: the
last block's output `v2_stack_3_block3_out` (7x7x2048 at 224x224). Its batch norms are made
synchronized (global-batch statistics under a distribution strategy; plain on one device). `pretrained_weights` is a
Keras weights file of the backbone (`ResNetBackbone.save_weights`, e.g. keras-cv's
`resnet50_imagenet` preset `model.weights.h5` copied to local disk); the fc layer starts fresh.

ResNet50 from keras.applications (`keras.applications.ResNet50(weights=None)`, same v1
bottleneck blocks; its convolutions carry biases and its batch norms use epsilon 1.001e-5, so its
weights are not interchangeable with keras-cv's), inputs in [0, 1] fed straight in, then the same
pooling and float32 fc head. Grad-CAM layer: the last block's output `conv5_block3_out` (7x7x2048
at 224x224). Batch norms synchronized as for keras-cv. `pretrained_weights` is a Keras weights
file of this backbone (`save_weights` of `keras.applications.ResNet50(include_top=False)`); note
that keras.applications' own ImageNet file was trained on caffe-preprocessed 0-255 BGR inputs,
not on the [0, 1] inputs used here.

InceptionV3 (Szegedy et al. 2016): `keras.applications.InceptionV3` behind a rescaling of [0, 1]
to its [-1, 1] input range. Grad-CAM layer: `mixed10`, the last 8x8x2048 map at 299x299, as in the
paper's analysis. `pretrained_weights` is a weights file of the whole network with the same
number of classes, e.g. keras.applications' `inception_v3_weights_tf_dim_ordering_tf_kernels.h5`.
"""

import os
from typing import Optional

import keras

from aad_tf.models import registry

RESNET50_GRADCAM_LAYER = 'v2_stack_3_block3_out'
RESNET50_KERAS_APPLICATIONS_GRADCAM_LAYER = 'conv5_block3_out'
INCEPTION_V3_GRADCAM_LAYER = 'mixed10'

# ResNet50 v1 as an explicit keras-cv configuration (no preset lookup, no download).
RESNET50_CONFIG = dict(stackwise_filters=[64, 128, 256, 512], stackwise_blocks=[3, 4, 6, 3],
                       stackwise_strides=[1, 2, 2, 2], block_type='block')


# --resnet_source -> registry name of the ResNet50 builder.
RESNET_SOURCES = {'keras_cv': 'resnet50', 'keras_applications': 'resnet50_keras_applications'}


def _check_weights_file(path: Optional[str]) -> Optional[str]:
  if path is None:
    return None
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f'pretrained_weights {path!r} is not a file. Pass a local Keras weights '
                     f'file (.weights.h5 or .h5); nothing is downloaded.')
  return path


def _load_weights(model: keras.Model, path: str, what: str) -> None:
  try:
    model.load_weights(path)
  except (ValueError, KeyError, OSError) as e:
    raise ValueError(f'Cannot load {path!r} into the {what}: {e}') from e


def _check_resnet50_arguments(input_shape, pretrained_weights: Optional[str]) -> Optional[str]:
  """Checks a ResNet50's input shape and weights file; returns the file's path (or None)."""
  path = _check_weights_file(pretrained_weights)
  if len(input_shape) != 3 or input_shape[-1] != 3 or min(input_shape[:2]) < 32:
    raise ValueError(f'ResNet50 needs RGB inputs of at least 32x32, got {input_shape}.')
  return path


@registry.register_model(
    'resnet50', gradcam_layer=RESNET50_GRADCAM_LAYER,
    description='ResNet50 v1 (keras-cv backbone); Grad-CAM on the last block (7x7x2048 at 224).')
def build_resnet50(input_shape, num_classes, *,
                   pretrained_weights: Optional[str] = None) -> keras.Model:
  """Returns ResNet50 mapping [B, H, W, 3] in [0, 1] to logits [B, num_classes].

  Args:
    input_shape: (H, W, 3); 224x224 for ImageNet (H, W >= 32).
    num_classes: number of output logits.
    pretrained_weights: local weights file of the backbone (see the module docstring).
  """
  import keras_cv  # pylint: disable=g-import-not-at-top

  path = _check_resnet50_arguments(input_shape, pretrained_weights)
  backbone = keras_cv.models.ResNetBackbone(**RESNET50_CONFIG, include_rescaling=False,
                                            input_shape=tuple(input_shape), name='resnet50_backbone')
  if path is not None:
    _load_weights(backbone, path, 'ResNet50 backbone')
  return _classifier_on(backbone, num_classes, name='resnet50')


@registry.register_model(
    'resnet50_keras_applications', gradcam_layer=RESNET50_KERAS_APPLICATIONS_GRADCAM_LAYER,
    description='ResNet50 v1 (keras.applications, no keras-cv); Grad-CAM on the last block.')
def build_resnet50_keras_applications(input_shape, num_classes, *,
                                      pretrained_weights: Optional[str] = None) -> keras.Model:
  """Returns keras.applications' ResNet50 mapping [B, H, W, 3] in [0, 1] to logits [B, num_classes].

  Args:
    input_shape: (H, W, 3); 224x224 for ImageNet (H, W >= 32).
    num_classes: number of output logits.
    pretrained_weights: local weights file of the backbone (see the module docstring).
  """
  path = _check_resnet50_arguments(input_shape, pretrained_weights)
  backbone = keras.applications.ResNet50(include_top=False, weights=None,
                                         input_shape=tuple(input_shape), pooling=None)
  if path is not None:
    _load_weights(backbone, path, 'ResNet50 backbone')
  return _classifier_on(backbone, num_classes, name='resnet50_keras_applications')


def _classifier_on(backbone: keras.Model, num_classes: int, *, name: str) -> keras.Model:
  """Global average pooling and a float32 fc layer on `backbone`, synchronized batch norms."""
  for layer in backbone.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.synchronized = True  # Read at call time; neither library exposes the argument.
  # Built on the backbone's own input and output tensors, the classifier is one flat graph: every
  # backbone layer, the Grad-CAM layer included, is a layer of the classifier.
  h = keras.layers.GlobalAveragePooling2D(name='avg_pool')(backbone.output)
  logits = keras.layers.Dense(num_classes, dtype='float32', name='logits')(h)
  return keras.Model(backbone.input, logits, name=name)


@registry.register_model(
    'inception_v3', gradcam_layer=INCEPTION_V3_GRADCAM_LAYER,
    description='InceptionV3 (keras.applications), for the attention analysis; Grad-CAM on mixed10.')
def build_inception_v3(input_shape, num_classes, *,
                       pretrained_weights: Optional[str] = None) -> keras.Model:
  """Returns InceptionV3 mapping [B, H, W, 3] in [0, 1] to logits [B, num_classes].

  Args:
    input_shape: (H, W, 3); 299x299 for ImageNet (H, W >= 75).
    num_classes: number of output logits.
    pretrained_weights: local weights file of the whole network (see the module docstring).
  """
  path = _check_weights_file(pretrained_weights)
  if len(input_shape) != 3 or input_shape[-1] != 3 or min(input_shape[:2]) < 75:
    raise ValueError(f'InceptionV3 needs RGB inputs of at least 75x75, got {input_shape}.')
  inputs = keras.Input(shape=tuple(input_shape), name='image')
  scaled = keras.layers.Rescaling(2.0, offset=-1.0, name='to_inception_range')(inputs)
  model = keras.applications.InceptionV3(include_top=True, weights=None, input_tensor=scaled,
                                         classes=num_classes, classifier_activation=None)
  classifier = keras.Model(inputs, model.output, name='inception_v3')
  if path is not None:
    _load_weights(classifier, path, 'InceptionV3 classifier')
  return classifier
