"""The depthwise input gradient of one-channel convolutions (aad_tf.attacks.conv_gradient): the
same gradients as TensorFlow's own, used only where it applies, and only inside the context."""

import numpy as np
import pytest
import tensorflow as tf

from aad_tf.attacks import conv_gradient
from tensorflow.python.framework import ops as tf_ops


def conv_net(kernel, padding, strides=1):
  """x -> a scalar through conv2d(x, kernel) and a nonlinearity (so gradients depend on x)."""
  return lambda x: tf.reduce_sum(tf.tanh(tf.nn.conv2d(x, kernel, strides, padding)) ** 2)


def gradients(fn, x, kernel):
  with tf.GradientTape() as tape:
    tape.watch([x, kernel])
    value = fn(x)
  return tape.gradient(value, [x, kernel])


def traced_ops(fn, x, kernel, fast):
  """The op types of the graph of d fn / d x, traced inside (fast) or outside the context."""
  def grad_x(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      value = fn(x)
    if fast:
      with conv_gradient.fast_input_gradients():
        return tape.gradient(value, x)
    return tape.gradient(value, x)
  graph = tf.function(grad_x).get_concrete_function(x).graph
  return {op.type for op in graph.get_operations()}


CASES = [  # (kernel height, kernel width, padding, image size)
    (5, 5, 'SAME', 28), (3, 3, 'SAME', 10), (4, 5, 'SAME', 9), (3, 4, 'VALID', 10),
    (1, 1, 'SAME', 6), (2, 3, 'VALID', 7), (5, 5, 'VALID', 12)]

NO_GPU = pytest.mark.skipif(bool(tf.config.list_logical_devices('GPU')),
                            reason='the context changes nothing where a GPU is visible')


@pytest.mark.parametrize('height,width,padding,image', CASES)
def test_input_and_filter_gradients_equal_tensorflows(height, width, padding, image):
  rng = np.random.default_rng(height * 10 + width)
  x = tf.constant(rng.uniform(size=[3, image, image + 1, 1]), tf.float32)
  kernel = tf.constant(rng.normal(size=[height, width, 1, 7]) * 0.3, tf.float32)
  fn = conv_net(kernel, padding)
  want_x, want_k = gradients(fn, x, kernel)
  with conv_gradient.fast_input_gradients():
    got_x, got_k = gradients(fn, x, kernel)
  scale = float(tf.reduce_max(tf.abs(want_x)))
  assert scale > 0
  np.testing.assert_allclose(got_x.numpy(), want_x.numpy(), atol=1e-5 * scale)
  np.testing.assert_allclose(got_k.numpy(), want_k.numpy(), rtol=1e-6)
  # Compiled, as the attacks run it.
  compiled = tf.function(lambda x: conv_gradient.input_gradient_1ch(
      tf.ones([3, *tf.nn.conv2d(x, kernel, 1, padding).shape[1:]]), kernel, padding))
  with tf.GradientTape() as tape:
    tape.watch(x)
    out = tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, padding))
  np.testing.assert_allclose(compiled(x).numpy(), tape.gradient(out, x).numpy(), rtol=1e-5,
                             atol=1e-5)


@NO_GPU
def test_the_depthwise_gradient_is_used_only_inside_the_context_and_only_where_it_applies():
  x = tf.random.uniform([2, 12, 12, 1])
  one_channel = conv_net(tf.random.normal([5, 5, 1, 8]), 'SAME')
  inside = traced_ops(one_channel, x, None, fast=True)
  outside = traced_ops(one_channel, x, None, fast=False)
  assert 'DepthwiseConv2dNative' in inside and 'Conv2DBackpropInput' not in inside
  assert 'Conv2DBackpropInput' in outside and 'DepthwiseConv2dNative' not in outside
  # Strided, or more than one input channel: TensorFlow's gradient, also inside.
  strided = traced_ops(conv_net(tf.random.normal([3, 3, 1, 4]), 'SAME', strides=2), x, None,
                       fast=True)
  assert 'Conv2DBackpropInput' in strided and 'DepthwiseConv2dNative' not in strided
  x3 = tf.random.uniform([2, 12, 12, 3])
  rgb = traced_ops(conv_net(tf.random.normal([3, 3, 3, 4]), 'SAME'), x3, None, fast=True)
  assert 'Conv2DBackpropInput' in rgb and 'DepthwiseConv2dNative' not in rgb
  # Dilated, or explicit padding: TensorFlow's gradient.
  kernel = tf.random.normal([3, 3, 1, 4])
  dilated = traced_ops(lambda z: tf.reduce_sum(tf.nn.conv2d(z, kernel, 1, 'SAME', dilations=2)),
                       x, None, fast=True)
  explicit = traced_ops(lambda z: tf.reduce_sum(tf.nn.conv2d(
      z, kernel, 1, [[0, 0], [1, 2], [2, 1], [0, 0]])), x, None, fast=True)
  for ops in (dilated, explicit):
    assert 'Conv2DBackpropInput' in ops and 'DepthwiseConv2dNative' not in ops


@NO_GPU
def test_the_environment_switch_turns_it_off(monkeypatch):
  x = tf.random.uniform([2, 12, 12, 1])
  fn = conv_net(tf.random.normal([5, 5, 1, 8]), 'SAME')
  monkeypatch.setenv('AAD_TF_FAST_CONV_GRADIENT', '0')
  off = traced_ops(fn, x, None, fast=True)
  assert 'Conv2DBackpropInput' in off and 'DepthwiseConv2dNative' not in off
  monkeypatch.setenv('AAD_TF_FAST_CONV_GRADIENT', '1')
  assert 'DepthwiseConv2dNative' in traced_ops(fn, x, None, fast=True)


@NO_GPU
def test_the_registry_is_restored_after_nesting_and_errors():
  original = tf_ops._gradient_registry.lookup('Conv2D')
  with conv_gradient.fast_input_gradients():
    swapped = tf_ops._gradient_registry.lookup('Conv2D')
    with conv_gradient.fast_input_gradients():
      assert tf_ops._gradient_registry.lookup('Conv2D') is swapped
    assert tf_ops._gradient_registry.lookup('Conv2D') is swapped  # still inside the outer one
  assert swapped is not original
  assert tf_ops._gradient_registry.lookup('Conv2D') is original
  with pytest.raises(RuntimeError):
    with conv_gradient.fast_input_gradients():
      raise RuntimeError('boom')
  assert tf_ops._gradient_registry.lookup('Conv2D') is original


def test_second_order_gradients_equal_tensorflows():
  """Attacks on attention differentiate through an input gradient; that must stay exact."""
  rng = np.random.default_rng(0)
  x = tf.constant(rng.uniform(size=[2, 8, 8, 1]), tf.float32)
  kernel = tf.constant(rng.normal(size=[3, 3, 1, 5]), tf.float32)
  fn = conv_net(kernel, 'SAME')

  def grad_norm_gradient(fast):
    with tf.GradientTape() as outer:
      outer.watch(x)
      with tf.GradientTape() as inner:
        inner.watch(x)
        value = fn(x)
      if fast:
        with conv_gradient.fast_input_gradients():
          g = inner.gradient(value, x)
      else:
        g = inner.gradient(value, x)
      total = tf.reduce_sum(g ** 2)
    return outer.gradient(total, x)

  want, got = grad_norm_gradient(False), grad_norm_gradient(True)
  np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5 * float(tf.reduce_max(
      tf.abs(want))))
