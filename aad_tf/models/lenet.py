"""LeNet as in Madry et al.'s MNIST challenge model (paper Sec. 5.1).

conv 32 5x5 (same) -> ReLU -> maxpool 2 -> conv 64 5x5 (same) -> ReLU [Grad-CAM layer]
-> maxpool 2 -> fc 1024 -> ReLU -> dropout (keep 0.5) -> fc num_classes (logits).

The Grad-CAM layer is the ReLU output of the last convolution, a 14x14x64 map on MNIST.
"""

import keras

from aad_tf.models import registry

GRADCAM_LAYER = 'gradcam'


@registry.register_model(
    'lenet', gradcam_layer=GRADCAM_LAYER,
    description="Madry et al.'s MNIST LeNet; Grad-CAM on the last conv (14x14x64).")
def build_lenet(input_shape, num_classes, *, keep_prob: float = 0.5) -> keras.Model:
  """Returns the LeNet classifier mapping [B, H, W, C] in [0, 1] to logits [B, num_classes].

  Args:
    input_shape: (H, W, C).
    num_classes: number of output logits.
    keep_prob: dropout keep probability of the fc layer (paper: 0.5).
  """
  if not 0.0 < keep_prob <= 1.0:
    raise ValueError(f'keep_prob must be in (0, 1], got {keep_prob}.')
  layers = keras.layers
  inputs = keras.Input(shape=input_shape, name='image')
  h = layers.Conv2D(32, 5, padding='same', activation='relu', name='conv1')(inputs)
  h = layers.MaxPooling2D(2, name='pool1')(h)
  h = layers.Conv2D(64, 5, padding='same', name='conv2')(h)
  h = layers.ReLU(name=GRADCAM_LAYER)(h)
  h = layers.MaxPooling2D(2, name='pool2')(h)
  h = layers.Flatten(name='flatten')(h)
  h = layers.Dense(1024, activation='relu', name='fc1')(h)
  h = layers.Dropout(1.0 - keep_prob, name='dropout')(h)
  # float32 logits under mixed precision (softmax, Grad-CAM's class score, the AAD losses).
  logits = layers.Dense(num_classes, dtype='float32', name='logits')(h)
  return keras.Model(inputs, logits, name='lenet')
