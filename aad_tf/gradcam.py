"""Differentiable, batched Grad-CAM and attention areas (paper Eq. 1-3, 7).

`gradcam` computes, for every image of a batch and its own class,

    g(x) = ReLU(sum_k alpha_k A^k),   alpha_k = mean_{i,j} d logit_c / d A^k_{ij}

with an inner `tf.GradientTape`. Called under an outer tape (training, or an attack taking input
gradients) the inner gradient is itself recorded, so losses on g(x) get exact second-order
gradients with respect to the weights and the input.

Scaling (`normalize=`, one of `NORMALIZATIONS`): the TOMM text defines g(x) but not its scale, and
the scale decides how much a loss weight such as the paper's alpha = beta = 0.01 moves the
weights (raw LeNet/MNIST maps have cells of about 3e-3). Training (AAD's L_p and masks), A^3 and the
diagnostics all take the map from `gradcam(..., normalize=...)` and compare maps with
`map_distance` (L1 over the cells), so one setting means one definition everywhere:

  none         ReLU(sum_k alpha_k A^k) as in Selvaraju et al. 2017, Eq. 1-2 and the TOMM paper,
               Eq. 1-2: unscaled.
  max          the same divided by its per-image maximum, into [0, 1]: the usual Grad-CAM display
               scaling (Selvaraju et al.'s released code, pytorch-grad-cam's `scale_cam_image`).
  rms_softmax  the authors' public TF1 code (arXiv v1): the gradients divided by their RMS
               (+1e-5), no ReLU, and a softmax over the h x w cells, so each map sums to 1. Their
               RMS is taken over the whole batch; here it is per image, so that an image's map does
               not depend on its batch companions (nor on how a global batch is split over
               replicas).

Attention areas turn a map into a binary mask: `Att(x) = g(x) >= kappa` with kappa the per-image
mean (paper default), a fixed value, or the top-k cells of the grid. A map without contrast (every
cell equal, e.g. all zero) has an empty attention area, so its masked image is the image itself.
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


NORMALIZATIONS = ('none', 'max', 'rms_softmax')
RMS_EPSILON = 1e-5    # the authors' code: grads / (sqrt(mean(grads ** 2)) + 1e-5)
MAX_EPSILON = 1e-12   # keeps an all-zero map at zero under 'max'


def check_normalize(normalize: str) -> str:
  if normalize not in NORMALIZATIONS:
    raise ValueError(f'gradcam normalize must be one of {NORMALIZATIONS}, got {normalize!r}.')
  return normalize


def gradcam(feature_fn: FeatureFn, x: tf.Tensor, labels: Optional[tf.Tensor] = None, *,
            normalize: str = 'none') -> Tuple[tf.Tensor, tf.Tensor]:
  """Batched Grad-CAM, differentiable with respect to weights and input.

  Args:
    feature_fn: x -> (features [B, h, w, K], logits [B, C]), e.g. `FeatureModel.fn()`.
    x: images [B, H, W, C].
    labels: int [B], the class explained for each image; None uses the predicted class.
    normalize: the map's scaling, one of `NORMALIZATIONS` (see the module docstring).

  Returns:
    (cam [B, h, w] >= 0, float32 or float64 as the features, logits [B, C]). Under 'max' every
    map lies in [0, 1]; under 'rms_softmax' every map sums to 1.
  """
  check_normalize(normalize)
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
  grads = tf.cast(grads, features.dtype)
  if normalize == 'rms_softmax':
    rms = tf.sqrt(tf.reduce_mean(tf.square(grads), axis=[1, 2, 3], keepdims=True))
    grads = grads / (rms + RMS_EPSILON)
  weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)  # [B, 1, 1, K]
  weighted = tf.reduce_sum(weights * features, axis=-1)  # [B, h, w]
  if normalize == 'rms_softmax':
    shape = tf.shape(weighted)
    cam = tf.reshape(tf.nn.softmax(tf.reshape(weighted, [shape[0], -1]), axis=-1), shape)
  else:
    cam = tf.nn.relu(weighted)
    if normalize == 'max':
      cam = normalize_cam(cam)
  return cam, logits


def full_precision(t: tf.Tensor) -> tf.Tensor:
  """Casts half-precision tensors (mixed precision) to float32; float32/float64 stay as they are."""
  t = tf.convert_to_tensor(t)
  return tf.cast(t, tf.float32) if t.dtype in (tf.float16, tf.bfloat16) else t


def normalize_cam(cam: tf.Tensor, epsilon: float = MAX_EPSILON) -> tf.Tensor:
  """Scales each map [B, h, w] into [0, 1] by its maximum (differentiable; zero stays zero).

  Computed in float32 for bfloat16 maps (mixed precision): a bfloat16 quotient keeps 8 bits.
  """
  cam = full_precision(cam)
  peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
  return cam / (peak + epsilon)


def attention_area(cam: tf.Tensor, *, kappa: Union[str, float] = 'mean',
                   top_k: Optional[Union[int, tf.Tensor]] = None) -> tf.Tensor:
  """Binary attention area Att(x) (paper Eq. 3): {0, 1} [B, h, w], float32 (float64 for float64).

  The map and its threshold are compared in float32 even for a bfloat16 map: a bfloat16 mean
  rounds to 8 bits and can drop to the level of cells below the true mean, which then pass.

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
  # Without contrast (an all-zero map: kappa = mean = 0 and every cell >= 0) every cell would pass
  # and the masked image would be black; such a map points nowhere, so its area is empty.
  contrast = (tf.reduce_max(cam, axis=[1, 2], keepdims=True) >
              tf.reduce_min(cam, axis=[1, 2], keepdims=True))
  return tf.cast(tf.logical_and(cam >= threshold, contrast), cam.dtype)


def map_distance(cam_a: tf.Tensor, cam_b: tf.Tensor) -> tf.Tensor:
  """||a - b||_1 over the grid, per image [B]: the distance of L_p (Eq. 9) and of A^3 (Eq. 11)."""
  return tf.reduce_sum(tf.abs(full_precision(cam_a) - full_precision(cam_b)), axis=[1, 2])


def area_fraction(area: tf.Tensor) -> tf.Tensor:
  """Fraction of each image [B] inside a binary attention area [B, h, w] (cells are equal-sized)."""
  return tf.reduce_mean(tf.cast(area, tf.float32), axis=[1, 2])


def upsample_mask(mask: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Nearest-neighbour upsampling of a mask [B, h, w] to the input size: [B, H, W, 1]."""
  return tf.image.resize(mask[..., None], size, method='nearest')


def upsample_cam(cam: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Bilinear upsampling of maps [B, h, w] for display: [B, H, W]."""
  return tf.image.resize(cam[..., None], size, method='bilinear')[..., 0]


def mask_attention(x: tf.Tensor, cam: tf.Tensor, *, kappa: Union[str, float] = 'mean',
                   area: Optional[tf.Tensor] = None) -> tf.Tensor:
  """The rectification input x_m = x * (1 - Att(x)) (paper Eq. 7); the mask is a constant.

  Args:
    x: images [B, H, W, C].
    cam: their maps [B, h, w].
    kappa: threshold of the attention area.
    area: the attention area [B, h, w] if already computed (then cam and kappa are unused).
  """
  if area is None:
    area = attention_area(cam, kappa=kappa)
  mask = upsample_mask(area, tf.shape(x)[1:3])
  return x * (1.0 - tf.cast(mask, x.dtype))
