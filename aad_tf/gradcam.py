"""Differentiable, batched Grad-CAM and attention areas (paper Eq. 1-3, 7).

`gradcam` computes, for every image of a batch and its own class,

    g(x) = ReLU(sum_k alpha_k A^k),   alpha_k = mean_{i,j} d logit_c / d A^k_{ij}

with an inner `tf.GradientTape`. Called under an outer tape (training, or an attack taking input
gradients) the inner gradient is itself recorded, so losses on g(x) get exact second-order
gradients with respect to the weights and the input.

Attention areas turn a map into a binary mask: `Att(x) = g(x) >= kappa` with kappa the per-image
mean (paper default), a fixed value, or the top-k cells of the grid.
"""

from typing import Callable, Optional, Tuple, Union

import keras
import tensorflow as tf

FeatureFn = Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]


class FeatureModel:
  """A classifier seen as x -> (features of its Grad-CAM layer, logits), in one forward pass.

  Shares every weight with `classifier`; building it adds no variables.

  Args:
    classifier: a functional `keras.Model` returning logits.
    layer_name: the layer whose output [B, h, w, K] Grad-CAM weights.
  """

  def __init__(self, classifier: keras.Model, layer_name: str):
    try:
      layer = classifier.get_layer(layer_name)
    except ValueError as e:
      raise ValueError(
          f'Grad-CAM layer {layer_name!r} is not a layer of model {classifier.name!r}.') from e
    if len(layer.output.shape) != 4:
      raise ValueError(
          f'Grad-CAM layer {layer_name!r} must output [B, h, w, K]; got {layer.output.shape}.')
    self.classifier = classifier
    self.layer_name = layer_name
    inputs = classifier.inputs[0] if len(classifier.inputs) == 1 else classifier.inputs
    self._model = keras.Model(inputs, [layer.output, classifier.outputs[0]],
                              name=f'{classifier.name}_features')

  @property
  def grid_shape(self) -> Tuple[int, int]:
    return tuple(self._model.outputs[0].shape[1:3])

  def __call__(self, x: tf.Tensor, training: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
    features, logits = self._model(x, training=training)
    return features, logits

  def fn(self, training: bool = False) -> FeatureFn:
    """Returns x -> (features, logits) with the given training mode."""
    return lambda x: self(x, training=training)


def gradcam(feature_fn: FeatureFn, x: tf.Tensor, labels: Optional[tf.Tensor] = None,
            ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Batched Grad-CAM, differentiable with respect to weights and input.

  Args:
    feature_fn: x -> (features [B, h, w, K], logits [B, C]), e.g. `FeatureModel.fn()`.
    x: images [B, H, W, C].
    labels: int [B], the class explained for each image; None uses the predicted class.

  Returns:
    (cam [B, h, w] >= 0, float32 or float64 as the features, logits [B, C]).
  """
  x = tf.convert_to_tensor(x)
  with tf.GradientTape() as tape:
    # Watching x records the whole forward pass even when no weight is trainable (frozen models,
    # attacks), so that d logit / d features exists.
    tape.watch(x)
    features, logits = feature_fn(x)
    if labels is None:
      labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
    # Images are independent, so the gradient of the batch sum gives each image its own alpha.
    score = tf.reduce_sum(tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1))
  grads = tape.gradient(score, features)
  if grads is None:
    raise ValueError('The logits do not depend on the Grad-CAM features: choose a layer on the '
                     'path from the input to the logits, and do not wrap feature_fn alone in a '
                     'tf.function (wrap the code that calls gradcam instead).')
  features = full_precision(features)
  weights = tf.reduce_mean(tf.cast(grads, features.dtype), axis=[1, 2], keepdims=True)  # [B,1,1,K]
  cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
  return cam, logits


def full_precision(t: tf.Tensor) -> tf.Tensor:
  """Casts half-precision tensors (mixed precision) to float32; float32/float64 stay as they are."""
  t = tf.convert_to_tensor(t)
  return tf.cast(t, tf.float32) if t.dtype in (tf.float16, tf.bfloat16) else t


def normalize_cam(cam: tf.Tensor, epsilon: float = 1e-12) -> tf.Tensor:
  """Scales each map [B, h, w] into [0, 1] by its maximum (differentiable)."""
  peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
  return cam / (peak + epsilon)


def attention_area(cam: tf.Tensor, *, kappa: Union[str, float] = 'mean',
                   top_k: Optional[Union[int, tf.Tensor]] = None) -> tf.Tensor:
  """Binary attention area Att(x) (paper Eq. 3): {0, 1} [B, h, w] in the dtype of `cam`.

  Args:
    cam: Grad-CAM maps [B, h, w].
    kappa: 'mean' (per-image mean of the map, paper default) or a fixed float threshold.
    top_k: if given, keep exactly this many highest cells per image instead (an int, or an int
      tensor [B] for a per-image count, e.g. the box area for the equal-area kappa). Ties are
      broken by position, so exactly k cells are kept.
  """
  cam = tf.stop_gradient(full_precision(cam))
  if top_k is not None:
    shape = tf.shape(cam)
    flat = tf.reshape(cam, [shape[0], -1])
    order = tf.argsort(flat, axis=-1, direction='DESCENDING', stable=True)
    ranks = tf.argsort(order, axis=-1, stable=True)  # rank of each cell, 0 = highest
    k = tf.cast(tf.convert_to_tensor(top_k), tf.int32)
    k = tf.reshape(k, [-1, 1]) if k.shape.rank else k
    return tf.reshape(tf.cast(ranks < k, cam.dtype), shape)
  if isinstance(kappa, str):
    if kappa != 'mean':
      raise ValueError(f"kappa must be 'mean' or a number, got {kappa!r}.")
    threshold = tf.reduce_mean(cam, axis=[1, 2], keepdims=True)
  else:
    threshold = tf.constant(float(kappa), cam.dtype)
  return tf.cast(cam >= threshold, cam.dtype)


def upsample_mask(mask: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Nearest-neighbour upsampling of a mask [B, h, w] to the input size: [B, H, W, 1]."""
  return tf.image.resize(mask[..., None], size, method='nearest')


def upsample_cam(cam: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Bilinear upsampling of maps [B, h, w] for display: [B, H, W]."""
  return tf.image.resize(cam[..., None], size, method='bilinear')[..., 0]


def mask_attention(x: tf.Tensor, cam: tf.Tensor, *, kappa: Union[str, float] = 'mean') -> tf.Tensor:
  """The rectification input x_m = x * (1 - Att(x)) (paper Eq. 7); the mask is a constant."""
  mask = upsample_mask(attention_area(cam, kappa=kappa), tf.shape(x)[1:3])
  return x * (1.0 - tf.cast(mask, x.dtype))
