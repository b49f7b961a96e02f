"""Small MNIST models shared by the evaluation tests (trained once per pytest process).

  trained_model(data_dir)      a small CNN trained normally (~97 % clean accuracy in ~5 s)
  adversarial_model(data_dir)  the same architecture trained with 3-step PGD at eps 0.1
  masked_fn(model)             the trained model behind a 1/255 quantisation of its input: the
                               same predictions, but every input gradient is exactly zero
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from aad_tf import attacks
from aad_tf import data as data_lib

GRADCAM_LAYER = 'gradcam'
NUM_TRAIN = 4000


def build(seed: int = 0) -> keras.Model:
  """conv 16 5x5 /2 -> ReLU -> conv 32 3x3 /2 -> ReLU [Grad-CAM layer, 7x7] -> fc 10."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((28, 28, 1))
  h = keras.layers.Conv2D(16, 5, strides=2, padding='same', activation='relu')(inputs)
  h = keras.layers.Conv2D(32, 3, strides=2, padding='same', activation='relu',
                          name=GRADCAM_LAYER)(h)
  h = keras.layers.Flatten()(h)
  logits = keras.layers.Dense(10)(h)
  return keras.Model(inputs, logits, name='small_cnn')


def _train(data_dir, *, adversarial_eps: float, steps: int, seed: int = 0) -> keras.Model:
  arrays = data_lib.load_arrays('mnist', data_dir=str(data_dir))
  x, y = arrays.x_train[:NUM_TRAIN], arrays.y_train[:NUM_TRAIN]
  model = build(seed)
  optimizer = keras.optimizers.Adam(3e-3)
  model_fn = lambda images: model(images, training=False)

  @tf.function
  def step(xb, yb):
    if adversarial_eps > 0:
      xb = attacks.pgd(model_fn, xb, yb, eps=adversarial_eps, step_size=adversarial_eps / 2,
                       num_steps=3)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(attacks.cross_entropy(model(xb, training=True), yb))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return loss

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    index = rng.integers(0, NUM_TRAIN, 64)
    step(tf.constant(x[index]), tf.constant(y[index]))
  return model


@functools.lru_cache(maxsize=None)
def trained_model(data_dir) -> keras.Model:
  return _train(data_dir, adversarial_eps=0.0, steps=300)


@functools.lru_cache(maxsize=None)
def adversarial_model(data_dir) -> keras.Model:
  return _train(data_dir, adversarial_eps=0.1, steps=200)


def masked_fn(model: keras.Model):
  """x -> logits of `model` on round(255 x) / 255: a gradient-masked copy (zero gradients)."""
  return lambda images: model(tf.round(images * 255.0) / 255.0, training=False)


def first_test_examples(data_dir, n: int):
  arrays = data_lib.load_arrays('mnist', data_dir=str(data_dir))
  return arrays.x_test[:n], arrays.y_test[:n]
