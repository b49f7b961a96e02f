"""A faster input gradient through convolutions of one-channel images, for attacks on the CPU.

Every gradient attack spends most of its time in `d loss / d x`. For a model whose first
convolution reads a one-channel (grayscale) image, as every MNIST model does, TensorFlow's CPU
kernel for that convolution's input gradient (`Conv2DBackpropInput` with one input channel,
oneDNN) is slow: on the MNIST LeNet it takes longer than the input gradient of the 25x larger
second convolution, a quarter of the whole gradient pass (benchmarks/conv_gradient.py measures it
on and off in one run).

The input gradient of a stride-1 convolution is the convolution of the output gradient with the
spatially flipped kernel; with one input channel that is a depthwise convolution (one filter per
output channel) summed over the output channels, which TensorFlow runs 2-3x faster. Inside
`fast_input_gradients()`, tape gradients of `Conv2D` ops compute exactly that for NHWC, stride 1,
dilation 1, SAME or VALID padding, one input channel; every other convolution, and every filter
gradient, is TensorFlow's own `Conv2D` gradient. The two agree to float rounding
(tests/test_attacks_conv_gradient.py), so results change only at that level.

Who uses it: `attacks.core.input_gradient` (so FGSM, StepLL, PGD, CW, the training attacks of the
base defenses, e.g. Madry's inner PGD, and the masking diagnostics), APGD and FAB. Not the
attention attacks (A^3's adaptive variant takes its own tape) and not AAD's Grad-CAM terms.

TensorFlow looks gradient functions up in its registry when `tape.gradient` builds the backward
graph (its `gradient_override_map` does not reach tapes), so the context swaps the registry's
`Conv2D` entry for its duration and puts TensorFlow's back on exit (nested uses are counted;
the registry is process-wide, so other threads meanwhile get the same, numerically equal
function). A backward function that TensorFlow builds before the context (e.g. one stored in a
loaded SavedModel) keeps TensorFlow's gradient. The swap touches TensorFlow's private registry
(`tensorflow<2.22` is pinned); where it is missing, or a GPU is visible (cuDNN's kernel is
fast), or the environment sets AAD_TF_FAST_CONV_GRADIENT=0 when a graph is traced, the context
changes nothing.
"""

import contextlib
import os
import threading

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import gen_nn_ops

_LOCK = threading.Lock()
_state = {'depth': 0, 'original': None, 'swapped': False}


def enabled() -> bool:
  """False where AAD_TF_FAST_CONV_GRADIENT=0 (read at each use: set it before tracing)."""
  return os.environ.get('AAD_TF_FAST_CONV_GRADIENT', '1') != '0'


def _registry_entry():
  """TensorFlow's registry entry for the Conv2D gradient ({'type': fn, ...}), or None."""
  registry = getattr(getattr(tf_ops, '_gradient_registry', None), '_registry', None)
  entry = registry.get('Conv2D') if isinstance(registry, dict) else None
  return entry if isinstance(entry, dict) and callable(entry.get('type')) else None


def applies(op) -> bool:
  """Whether `op` (a Conv2D) gets the depthwise input gradient."""
  filter_shape = op.inputs[1].shape
  return (op.get_attr('data_format') in (b'NHWC', 'NHWC')
          and list(op.get_attr('strides')) == [1, 1, 1, 1]
          and list(op.get_attr('dilations')) == [1, 1, 1, 1]
          and op.get_attr('padding') in (b'SAME', b'VALID', 'SAME', 'VALID')
          and op.inputs[0].shape.rank == 4 and op.inputs[0].shape[-1] == 1
          and filter_shape.rank == 4 and filter_shape[0] is not None
          and filter_shape[1] is not None)


def input_gradient_1ch(grad: tf.Tensor, kernel: tf.Tensor, padding: str) -> tf.Tensor:
  """d x of y = conv2d(x, kernel, stride 1, padding) for x with one channel, given d y.

  Args:
    grad: d y [B, H', W', C_out].
    kernel: [kh, kw, 1, C_out].
    padding: 'SAME' or 'VALID' (of the forward convolution).

  Returns:
    d x [B, H, W, 1].
  """
  kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
  flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])  # [kh, kw, C_out, 1]
  if padding in (b'VALID', 'VALID'):  # the transpose pads kh - 1 / kw - 1 on every side
    padded = tf.pad(grad, [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]])
  elif kh % 2 and kw % 2:  # SAME, odd kernel: the transpose pads as SAME does
    padded = None
  else:  # SAME pads (k - 1) // 2 before and the rest after; the transpose mirrors that
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = tf.pad(grad, [[0, 0], [kh - 1 - top, top], [kw - 1 - left, left], [0, 0]])
  per_channel = (tf.nn.depthwise_conv2d(grad, flipped, [1, 1, 1, 1], 'SAME') if padded is None
                 else tf.nn.depthwise_conv2d(padded, flipped, [1, 1, 1, 1], 'VALID'))
  return tf.reduce_sum(per_channel, axis=-1, keepdims=True)


def _conv2d_gradient(op, grad):
  # `original` is captured at the first swap and never cleared, so a thread that looked this
  # function up while another thread was inside the context can still fall back to it.
  if not applies(op):
    return _state['original'](op, grad)
  x, kernel = op.inputs
  return [input_gradient_1ch(grad, kernel, op.get_attr('padding')),
          gen_nn_ops.conv2d_backprop_filter(
              x, tf.shape(kernel), grad, dilations=op.get_attr('dilations'),
              strides=op.get_attr('strides'), padding=op.get_attr('padding'),
              explicit_paddings=op.get_attr('explicit_paddings'),
              use_cudnn_on_gpu=op.get_attr('use_cudnn_on_gpu'),
              data_format=op.get_attr('data_format'))]


def _gpu_visible() -> bool:
  return bool(tf.config.list_logical_devices('GPU'))


@contextlib.contextmanager
def fast_input_gradients():
  """Within: `tape.gradient` through one-channel Conv2D ops uses the depthwise input gradient.

  The registry is process-wide: while one thread is inside, gradients that other threads take
  use the same (numerically equal) function.
  """
  with _LOCK:
    if _state['depth'] == 0 and enabled() and not _gpu_visible():
      entry = _registry_entry()
      if entry is not None:
        if _state['original'] is None:
          _state['original'] = entry['type']
        entry['type'], _state['swapped'] = _conv2d_gradient, True
    _state['depth'] += 1
  try:
    yield
  finally:
    with _LOCK:
      _state['depth'] -= 1
      if _state['depth'] == 0 and _state['swapped']:
        _registry_entry()['type'], _state['swapped'] = _state['original'], False
