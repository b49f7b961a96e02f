"""The tiny classifier, training attack and images shared by the figures tests."""

import keras
import numpy as np

from aad_tf import defenses as defense_lib

ATTACK = defense_lib.AttackConfig(eps=0.3, step_size=0.1, num_steps=3)


def tiny_classifier(seed=0):
  """A small functional CNN (28x28x1 -> 10 logits) with its Grad-CAM layer named 'cam'."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((28, 28, 1))
  h = keras.layers.Conv2D(4, 3, strides=2, padding='same', activation='relu')(inputs)
  h = keras.layers.Conv2D(6, 3, padding='same', activation='relu', name='cam')(h)
  h = keras.layers.GlobalAveragePooling2D()(h)
  return keras.Model(inputs, keras.layers.Dense(10)(h))


def images(n=4, seed=1):
  rng = np.random.default_rng(seed)
  return rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32), np.arange(n, dtype=np.int32) % 10
