r"""What the depthwise one-channel input gradient (aad_tf/attacks/conv_gradient.py) saves.

  python -m benchmarks.conv_gradient --data_dir=../shared/data --output=/tmp/conv_gradient

On the MNIST LeNet, with the fast gradient on (the default) and off (AAD_TF_FAST_CONV_GRADIENT=0,
set while each function is traced), in one run, interleaved round-robin for --rounds rounds so
that machine noise falls on both: the input gradient of the first convolution alone, one input
gradient pass of the whole model, a PGD-k attack, and one Madry PGD-k training step (k =
--pgd_steps). Reports the median time of each and the ratio off / on, and checks that the two
settings give the same input gradient (to float rounding).
"""

import json
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from aad_tf import attacks
from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import models
from benchmarks import autoattack_vs_art

FLAGS = flags.FLAGS
SWITCH = 'AAD_TF_FAST_CONV_GRADIENT'


def define_flags():
  """The benchmark's flags (a function, so that tests can import this module)."""
  flags.DEFINE_string('data_dir', None, 'Directory with mnist.npz; random images if unset.')
  flags.DEFINE_integer('batch_size', 100, 'Images per call.', lower_bound=1)
  flags.DEFINE_integer('pgd_steps', 10, 'Steps of the PGD attack and of the training attack.',
                       lower_bound=1)
  flags.DEFINE_integer('repeats', 5, 'Calls per timing.', lower_bound=1)
  flags.DEFINE_integer('rounds', 5, 'Round-robin rounds.', lower_bound=1)
  flags.DEFINE_string('output', None, 'Optional path without extension (.json written).')


def traced(build, fast: bool):
  """build() -> (fn, args), traced and warmed up with the fast gradient on or off."""
  previous = os.environ.get(SWITCH)
  os.environ[SWITCH] = '1' if fast else '0'
  try:
    fn, args = build()
    fn(*args)  # traces now, under this setting
  finally:
    if previous is None:
      del os.environ[SWITCH]
    else:
      os.environ[SWITCH] = previous
  return lambda: fn(*args)


def cases(x, y, pgd_steps: int = 10):
  """name -> builder of (compiled fn, args): the four timed computations."""
  classifier = models.get_model('lenet', input_shape=x.shape[1:], num_classes=10)
  model_fn = lambda images: classifier(images, training=False)
  conv1 = classifier.get_layer('conv1')
  eps = 0.3

  def first_conv():
    fn = tf.function(lambda images: attacks.input_gradient(
        lambda z: tf.reduce_sum(tf.square(conv1(z)), axis=[1, 2, 3]), images))
    return fn, (x,)

  def model_gradient():
    fn = tf.function(lambda images, labels: attacks.input_gradient(
        lambda z: attacks.cross_entropy(model_fn(z), labels), images))
    return fn, (x, y)

  def pgd():
    fn = tf.function(lambda images, labels: attacks.pgd(
        model_fn, images, labels, eps=eps, step_size=eps / 4, num_steps=pgd_steps,
        seed=tf.constant([0, 0])))
    return fn, (x, y)

  def train_step():
    trainer = defense_lib.AADModel(
        models.get_model('lenet', input_shape=x.shape[1:], num_classes=10),
        models.get_spec('lenet').gradcam_layer,
        defense_lib.DefenseConfig(defense='madry', attack=defense_lib.AttackConfig(
            eps=eps, step_size=eps / 4, num_steps=pgd_steps)))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    fn = tf.function(trainer.train_step)
    return (lambda data: fn(data)['loss']), ((x, y),)

  return {'first_conv_input_gradient': first_conv, 'model_input_gradient': model_gradient,
          f'pgd{pgd_steps}': pgd, f'madry_pgd{pgd_steps}_train_step': train_step}


def batch():
  if FLAGS.data_dir:
    arrays = data_lib.load_arrays('mnist', data_dir=FLAGS.data_dir, source='npz')
    x = np.asarray(arrays.x_train[:FLAGS.batch_size], np.float32)
    y = arrays.y_train[:FLAGS.batch_size].astype(np.int32)
  else:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=[FLAGS.batch_size, 28, 28, 1]).astype(np.float32)
    y = rng.integers(0, 10, FLAGS.batch_size).astype(np.int32)
  return tf.constant(x), tf.constant(y)


def seconds(call, repeats: int) -> float:
  start = time.process_time()
  for _ in range(repeats):
    result = call()
  tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t, result)
  return (time.process_time() - start) / repeats


def main(argv):
  del argv
  keras.utils.set_random_seed(0)
  x, y = batch()
  builders = cases(x, y, FLAGS.pgd_steps)
  calls = {}
  for name, build in builders.items():
    for fast in (True, False):
      calls[(name, fast)] = traced(build, fast)
  same = np.abs(calls[('model_input_gradient', True)]().numpy()
                - calls[('model_input_gradient', False)]().numpy()).max()
  times = {key: [] for key in calls}
  for _ in range(FLAGS.rounds):
    for key, call in calls.items():
      times[key].append(seconds(call, FLAGS.repeats))
  result = {'batch_size': FLAGS.batch_size, 'pgd_steps': FLAGS.pgd_steps, 'clock': 'cpu',
            'rounds': FLAGS.rounds, 'repeats': FLAGS.repeats,
            'threads': autoattack_vs_art.thread_settings(),
            'max_abs_gradient_difference': float(same), 'cases': {}}
  lines = ['| computation | fast on (ms) | off (ms) | off / on |', '|---|---|---|---|']
  for name in builders:
    on = statistics.median(times[(name, True)])
    off = statistics.median(times[(name, False)])
    result['cases'][name] = {'on_ms': 1e3 * on, 'off_ms': 1e3 * off, 'ratio': off / on,
                             'on_rounds_ms': [1e3 * t for t in times[(name, True)]],
                             'off_rounds_ms': [1e3 * t for t in times[(name, False)]]}
    lines.append(f'| {name} | {1e3 * on:.1f} | {1e3 * off:.1f} | {off / on:.2f}x |')
  print('\n'.join(lines))
  print(f'Largest difference of the two input gradients: {same:.2e}')
  if FLAGS.output:
    with open(FLAGS.output + '.json', 'w') as f:
      json.dump(result, f, indent=2, sort_keys=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
