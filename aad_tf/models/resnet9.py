"""ResNet9, the standard fast CIFAR-10 ResNet (D. Page, "How to train your ResNet", 2018).

    prep    conv 64                                                    32x32
    layer1  conv 128 -> maxpool 2 -> + residual(conv 128, conv 128)   16x16
    layer2  conv 256 -> maxpool 2                                      8x8
    layer3  conv 512 -> maxpool 2 -> + residual(conv 512, conv 512)   4x4   [Grad-CAM layer]
    head    global max pool -> fc num_classes (no bias) -> x 0.125 (logits)

Every "conv" is a 3x3 convolution without bias, batch norm and ReLU. Batch norm is synchronized:
under a distribution strategy it normalises with the statistics of the global batch, so a step on
several replicas equals the step on one device (on one device it is plain batch norm). The Grad-CAM layer is the
output of the last residual block, a 4x4x512 map on 32x32 inputs (each cell covers 8x8 pixels).
The logits layers run in float32 under a mixed-precision policy.
"""

import keras

from aad_tf.models import registry

GRADCAM_LAYER = 'gradcam'
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1 in Keras's convention.


def _conv_bn(x, filters: int, name: str):
  layers = keras.layers
  x = layers.Conv2D(filters, 3, padding='same', use_bias=False, name=f'{name}_conv')(x)
  x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-5, synchronized=True,
                                name=f'{name}_bn')(x)
  return layers.ReLU(name=f'{name}_relu')(x)


def _residual(x, filters: int, name: str, output_name: str):
  h = _conv_bn(x, filters, f'{name}_res1')
  h = _conv_bn(h, filters, f'{name}_res2')
  return keras.layers.Add(name=output_name)([x, h])


@registry.register_model(
    'resnet9', gradcam_layer=GRADCAM_LAYER,
    description='Fast CIFAR ResNet9 (Page 2018); Grad-CAM on the last residual block (4x4x512).')
def build_resnet9(input_shape, num_classes, *, width: int = 64) -> keras.Model:
  """Returns ResNet9 mapping [B, H, W, C] in [0, 1] to logits [B, num_classes].

  Args:
    input_shape: (H, W, C); H and W divisible by 8 (32x32 for CIFAR-10).
    num_classes: number of output logits.
    width: channels of the first convolution; the stages have 2, 4 and 8 times as many (the
      standard network: 64). Smaller widths are for tests and quick experiments.
  """
  height, width_px = input_shape[0], input_shape[1]
  if height is None or width_px is None or height % 8 or width_px % 8:
    raise ValueError(f'ResNet9 needs a fixed input size divisible by 8, got {input_shape}.')
  if int(width) != width or width < 1:
    raise ValueError(f'width must be a positive integer, got {width}.')
  layers = keras.layers
  inputs = keras.Input(shape=input_shape, name='image')
  h = _conv_bn(inputs, width, 'prep')
  h = _conv_bn(h, 2 * width, 'layer1')
  h = layers.MaxPooling2D(2, name='layer1_pool')(h)
  h = _residual(h, 2 * width, 'layer1', 'layer1_out')
  h = _conv_bn(h, 4 * width, 'layer2')
  h = layers.MaxPooling2D(2, name='layer2_pool')(h)
  h = _conv_bn(h, 8 * width, 'layer3')
  h = layers.MaxPooling2D(2, name='layer3_pool')(h)
  h = _residual(h, 8 * width, 'layer3', GRADCAM_LAYER)
  h = layers.GlobalMaxPooling2D(name='pool')(h)
  h = layers.Dense(num_classes, use_bias=False, dtype='float32', name='fc')(h)
  logits = layers.Rescaling(0.125, dtype='float32', name='logits')(h)
  return keras.Model(inputs, logits, name='resnet9')
