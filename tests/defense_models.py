"""Tiny models and images shared by the tests of aad_tf.attacks.inner and aad_tf.defenses."""

import keras
import numpy as np
import tensorflow as tf

SHAPE = (8, 8, 1)
CLASSES = 3
EPS = 0.3


def tiny_classifier(shape=SHAPE, classes=CLASSES, seed=0):
  """conv -> ReLU ('gradcam') -> dense: small enough for second-order AAD steps on CPU."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input(shape=shape)
  h = keras.layers.Conv2D(4, 3, padding='same', name='conv')(inputs)
  h = keras.layers.ReLU(name='gradcam')(h)
  h = keras.layers.Flatten()(h)
  return keras.Model(inputs, keras.layers.Dense(classes, name='logits')(h))


def linear_model(seed=0):
  """A linear softmax classifier on flattened SHAPE images, as (model_fn, W, b) in float32."""
  rng = np.random.default_rng(seed)
  dim = int(np.prod(SHAPE))
  w = rng.normal(size=(dim, CLASSES)).astype(np.float32)
  b = rng.normal(size=CLASSES).astype(np.float32)
  fn = lambda x: tf.matmul(tf.reshape(x, [-1, dim]), w) + b
  return fn, w.astype(np.float64), b.astype(np.float64)


def images(n=6, seed=1):
  rng = np.random.default_rng(seed)
  return rng.uniform(0.1, 0.9, size=(n, *SHAPE)).astype(np.float32)


def np_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def np_kl(clean, adv):
  p, q = np_softmax(clean), np_softmax(adv)
  return np.sum(p * (np.log(p) - np.log(q)), axis=-1)
