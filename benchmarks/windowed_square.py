r"""What the windowed forward passes (aad_tf/attacks/windowed.py) save in Square.

  python -m benchmarks.windowed_square --data_dir=../shared/data --output=/tmp/windowed_square

On one MNIST LeNet (a .keras file with --model, else a freshly initialised one), in one run:

  * per window side s: one query of --batch_size images, windowed vs a whole forward pass,
    interleaved round-robin for --rounds rounds (median times and their ratio);
  * Square Attack itself (--queries queries on the first --batch_size test images) with the
    Keras model given (windowed) and without (one forward pass per query), with the same seed:
    wall time, robust accuracy of each, and how many adversarial images are the same.
"""

import json
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from aad_tf import data as data_lib
from aad_tf import models
from aad_tf.attacks import square
from aad_tf.attacks import windowed

FLAGS = flags.FLAGS


def define_flags():
  """The benchmark's flags (a function, so that tests can import this module)."""
  flags.DEFINE_string('model', None, 'A .keras MNIST classifier; a new LeNet if unset.')
  flags.DEFINE_string('data_dir', None, 'Directory with mnist.npz; random images if unset.')
  flags.DEFINE_integer('batch_size', 200, 'Images per query and attacked by Square.',
                       lower_bound=1)
  flags.DEFINE_list('sides', ['1', '2', '3', '6', '13', '25'], 'Window sides timed.')
  flags.DEFINE_integer('queries', 1000, 'Square budget (0: skip the attack).', lower_bound=0)
  flags.DEFINE_float('eps', 0.3, 'Square radius.', lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('repeats', 10, 'Calls per timing.', lower_bound=1)
  flags.DEFINE_integer('rounds', 3, 'Round-robin rounds.', lower_bound=1)
  flags.DEFINE_string('output', None, 'Optional path without extension (.json written).')


def query_cases(model, images, sides):
  """name -> a traced no-argument function: one windowed query per side, and the model."""
  model_fn = lambda x: model(x, training=False)
  plan = windowed.plan(model_fn, model, images.shape[1:])
  if not plan.incremental:
    raise ValueError(f'{model.name} has no windowed plan: {plan.reason}')
  _, state = plan.full(images)
  active = tf.range(images.shape[0], dtype=tf.int64)
  height = images.shape[1]
  cases = {'forward': (tf.function(model_fn), (images,))}
  for side in sides:
    corner = (tf.constant((height - side) // 2), tf.constant((height - side) // 3))
    new = tf.random.stateless_uniform([images.shape[0], side, side, images.shape[3]], [0, side])
    fn = tf.function(lambda s, n, c=corner: plan.query(s, active, c, n)[0])
    cases[f'query_s{side}'] = (fn, (state, new))
  for fn, args in cases.values():
    fn(*args)  # trace and warm up
  return {name: (lambda fn=fn, args=args: fn(*args)) for name, (fn, args) in cases.items()}


def time_cases(cases, repeats: int, rounds: int) -> dict[str, float]:
  """Median seconds per call, interleaved round-robin."""
  samples = {name: [] for name in cases}
  for _ in range(rounds):
    for name, fn in cases.items():
      start = time.perf_counter()
      for _ in range(repeats):
        out = fn()
      np.asarray(out)
      samples[name].append((time.perf_counter() - start) / repeats)
  return {name: statistics.median(values) for name, values in samples.items()}


def run_square(model, x, y, *, queries: int, eps: float):
  """Square with and without the windowed passes: times, accuracies, identical images."""
  model_fn = lambda images: model(images, training=False)
  out = {}
  for name, given in (('windowed', model), ('plain', None)):
    attack = tf.function(lambda a, b, given=given: square.square_linf(
        model_fn, a, b, eps=eps, num_queries=queries, seed=[0, 1], model=given))
    start = time.perf_counter()
    x_adv = attack(x, y).numpy()
    out[name] = {'seconds': time.perf_counter() - start,
                 'robust_accuracy': float(np.mean(
                     np.argmax(model.predict(x_adv, verbose=0), -1) == y.numpy())),
                 'x_adv': x_adv}
  same = np.all(np.abs(out['windowed'].pop('x_adv') - out['plain'].pop('x_adv')) < 1e-6,
                axis=(1, 2, 3))
  return {**out, 'speedup': out['plain']['seconds'] / out['windowed']['seconds'],
          'identical_fraction': float(same.mean())}


def main(argv):
  del argv
  keras.utils.set_random_seed(0)
  if FLAGS.model:
    model = keras.models.load_model(FLAGS.model, safe_mode=True, compile=False)
  else:
    model = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  if FLAGS.data_dir:
    arrays = data_lib.load_arrays('mnist', data_dir=FLAGS.data_dir)
    x = arrays.x_test[:FLAGS.batch_size].astype(np.float32)
    y = arrays.y_test[:FLAGS.batch_size].astype(np.int32)
  else:
    x = np.random.default_rng(0).uniform(size=(FLAGS.batch_size, 28, 28, 1)).astype(np.float32)
    y = np.zeros(FLAGS.batch_size, np.int32)
  x, y = tf.constant(x), tf.constant(y)
  sides = [int(s) for s in FLAGS.sides]
  times = time_cases(query_cases(model, x, sides), FLAGS.repeats, FLAGS.rounds)
  result = {'model': FLAGS.model or 'lenet (untrained)', 'batch_size': FLAGS.batch_size,
            'seconds': times,
            'forward_over_query': {f's{s}': times['forward'] / times[f'query_s{s}']
                                   for s in sides}}
  if FLAGS.queries:
    result['square'] = run_square(model, x, y, queries=FLAGS.queries, eps=FLAGS.eps)
  text = json.dumps(result, indent=2, sort_keys=True)
  print(text)
  if FLAGS.output:
    with open(FLAGS.output + '.json', 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  define_flags()
  app.run(main)
