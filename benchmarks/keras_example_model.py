r"""A second model for benchmarks/autoattack_vs_art.py, trained without aad-tf's trainers.

  python -m benchmarks.keras_example_model --data_dir=../shared/data --output=/tmp/keras_example.keras

Keras' "simple MNIST convnet" example (conv 3x3 32 'valid' + ReLU, max-pool 2, conv 3x3 64
'valid' + ReLU, max-pool 2, Flatten, Dropout 0.5, Dense 10; logits instead of its softmax),
adversarially trained in a plain TensorFlow loop: each batch is replaced by a PGD attack on it
(--pgd_steps steps of size 2.5 eps / steps from a uniform random start, eps --eps), Adam.
Nothing here imports aad_tf, so AutoAttack is checked on a model and a training loop the project
did not write.
"""

import os

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('data_dir', None, 'Directory with mnist.npz (keys x_train, y_train, ...).')
  flags.DEFINE_string('output', None, 'Where to write the .keras file.')
  flags.DEFINE_integer('steps', 3000, 'Training steps.', lower_bound=1)
  flags.DEFINE_integer('batch_size', 64, 'Batch size.', lower_bound=1)
  flags.DEFINE_float('eps', 0.3, 'PGD radius.', lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('pgd_steps', 7, 'PGD steps.', lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seed.')


def build() -> keras.Model:
  layers = keras.layers
  return keras.Sequential([
      keras.Input((28, 28, 1)),
      layers.Conv2D(32, 3, activation='relu'), layers.MaxPooling2D(2),
      layers.Conv2D(64, 3, activation='relu'), layers.MaxPooling2D(2),
      layers.Flatten(), layers.Dropout(0.5), layers.Dense(10)], name='keras_mnist_convnet')


def main(argv):
  del argv
  if not FLAGS.data_dir or not FLAGS.output:
    raise app.UsageError('--data_dir and --output are required.')
  keras.utils.set_random_seed(FLAGS.seed)
  with np.load(os.path.join(FLAGS.data_dir, 'mnist.npz')) as data:
    x = (data['x_train'].reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    y = data['y_train'].astype(np.int32)
  model = build()
  optimizer = keras.optimizers.Adam(1e-3)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  eps, k = FLAGS.eps, FLAGS.pgd_steps

  @tf.function
  def step(xb, yb):
    adv = tf.clip_by_value(xb + tf.random.uniform(tf.shape(xb), -eps, eps), 0.0, 1.0)
    for _ in range(k):
      with tf.GradientTape() as tape:
        tape.watch(adv)
        loss = loss_fn(yb, model(adv, training=False))
      adv = adv + 2.5 * eps / k * tf.sign(tape.gradient(loss, adv))
      adv = tf.clip_by_value(tf.clip_by_value(adv, xb - eps, xb + eps), 0.0, 1.0)
    with tf.GradientTape() as tape:
      loss = loss_fn(yb, model(adv, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return loss

  rng = np.random.default_rng(FLAGS.seed)
  for i in range(FLAGS.steps):
    index = rng.integers(0, len(x), FLAGS.batch_size)
    loss = step(tf.constant(x[index]), tf.constant(y[index]))
    if (i + 1) % 100 == 0:
      logging.info('step %d: adversarial loss %.3f', i + 1, float(loss))
  model.save(FLAGS.output)
  logging.info('Wrote %s.', FLAGS.output)


if __name__ == '__main__':
  define_flags()
  app.run(main)
