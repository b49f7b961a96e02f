r"""Training, Grad-CAM and attack throughput, measured in one run so that ratios are meaningful.

  python -m benchmarks.throughput --model=lenet --dataset=mnist --data_dir=../shared/data
  python -m benchmarks.throughput --model=resnet9 --dataset=cifar10 --data_dir=../shared/data

For each training variant (raw, madry, madry+aad, alp, alp+aad at the same PGD steps) the compiled
train step is warmed up, then the variants are timed round-robin for --rounds rounds of --steps
steps each (interleaving spreads machine noise over all variants); the median images/s is reported
with its ratio to madry. Also: Grad-CAM throughput (forward + backward to the Grad-CAM layer), and
PGD-k attack throughput as images/s and as a fraction of the machine's measured matmul FLOP rate
(model FLOPs counted analytically for Conv2D/Dense layers; one PGD step ~ 3 forward passes).
"""

import json
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from aad_tf import attacks
from aad_tf import data as data_lib
from aad_tf import defense as defense_lib
from aad_tf import gradcam as gradcam_lib
from aad_tf import models

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'lenet', 'Registered model.')
flags.DEFINE_string('dataset', 'mnist', 'Dataset (for shapes and, with --data_dir, real images).')
flags.DEFINE_string('data_dir', None, 'Directory with <dataset>.npz; random images if unset.')
flags.DEFINE_integer('batch_size', 100, 'Batch size.')
flags.DEFINE_integer('pgd_steps', 10, 'PGD steps of every adversarial variant and attack.')
flags.DEFINE_integer('steps', 5, 'Timed train steps per variant per round.')
flags.DEFINE_integer('rounds', 3, 'Round-robin rounds.')
flags.DEFINE_list('variants', ['raw', 'madry', 'madry_aad', 'alp', 'alp_aad'],
                  'Training variants: <defense>[_aad].')
flags.DEFINE_string('output', None, 'Optional JSON output path.')
flags.DEFINE_enum('clock', 'auto', ['auto', 'wall', 'cpu'],
                  'Timer: process CPU time is robust to other jobs sharing a CPU-only machine; '
                  'auto = cpu without a GPU, wall with one.')


def model_flops(model: keras.Model) -> float:
  """Forward FLOPs per image (2 x multiply-adds) of the Conv2D and Dense layers."""
  total = 0.0
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      kh, kw = layer.kernel_size
      _, h, w, c_out = layer.output.shape
      c_in = layer.input.shape[-1]
      total += 2.0 * h * w * kh * kw * c_in * c_out / (layer.groups or 1)
    elif isinstance(layer, keras.layers.Dense):
      total += 2.0 * layer.input.shape[-1] * layer.units
  return total


def matmul_flops_per_second(n: int = 2048, repeats: int = 10, timer=time.perf_counter) -> float:
  a = tf.random.normal([n, n])
  b = tf.random.normal([n, n])
  fn = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
  fn().numpy()
  started = timer()
  for _ in range(repeats):
    fn().numpy()
  return 2.0 * n ** 3 * repeats / (timer() - started)


def make_batch(info):
  if FLAGS.data_dir:
    arrays = data_lib.load_arrays(info.name, data_dir=FLAGS.data_dir, source='npz')
    x, y = arrays.x_train[:FLAGS.batch_size], arrays.y_train[:FLAGS.batch_size]
  else:
    rng = np.random.default_rng(0)
    x = rng.random((FLAGS.batch_size, *info.image_shape), np.float32)
    y = rng.integers(0, info.num_classes, FLAGS.batch_size).astype(np.int32)
  return tf.constant(x), tf.constant(y)


def build_trainer(variant: str, info) -> defense_lib.AADModel:
  defense, _, aad = variant.partition('_')
  defense = 'none' if defense == 'raw' else defense
  classifier = models.get_model(FLAGS.model, input_shape=info.image_shape,
                                num_classes=info.num_classes)
  eps = 0.3 if info.name == 'mnist' else 8 / 255
  config = defense_lib.DefenseConfig(
      defense=defense, aad=aad == 'aad',
      attack=defense_lib.AttackConfig(eps=eps, step_size=eps / 4, num_steps=FLAGS.pgd_steps))
  model = defense_lib.AADModel(classifier, models.get_spec(FLAGS.model).gradcam_layer, config)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  return model


def clock():
  use_cpu = FLAGS.clock == 'cpu' or (FLAGS.clock == 'auto' and
                                     not tf.config.list_physical_devices('GPU'))
  return time.process_time if use_cpu else time.perf_counter


def time_call(fn, repeats: int) -> float:
  """Seconds for `repeats` calls. With the CPU clock, images/s are per CPU-second of this
  process (all cores), a measure of work that other processes on the machine do not distort."""
  timer = clock()
  started = timer()
  for _ in range(repeats):
    out = fn()
  tf.nest.map_structure(lambda t: t.numpy(), out)
  return timer() - started


def main(argv):
  del argv
  info = data_lib.get_info(FLAGS.dataset)
  x, y = make_batch(info)
  b = FLAGS.batch_size
  results = {'clock': 'cpu' if clock() is time.process_time else 'wall', 'model': FLAGS.model, 'dataset': FLAGS.dataset, 'batch_size': b,
             'pgd_steps': FLAGS.pgd_steps, 'tensorflow': tf.__version__,
             'keras': keras.__version__}

  # Training steps, round-robin.
  steps = {}
  for variant in FLAGS.variants:
    model = build_trainer(variant, info)
    step = tf.function(model.train_step, reduce_retracing=True)
    step((x, y))  # trace + warm up
    steps[variant] = step
  times = {v: [] for v in steps}
  for _ in range(FLAGS.rounds):
    for variant, step in steps.items():
      seconds = time_call(lambda: step((x, y))['loss'], FLAGS.steps)
      times[variant].append(b * FLAGS.steps / seconds)
  train = {v: statistics.median(t) for v, t in times.items()}
  results['train_images_per_s'] = train
  if 'madry' in train:
    results['train_time_ratio_vs_madry'] = {v: train['madry'] / s for v, s in train.items()}

  # Grad-CAM and attack throughput on one classifier.
  classifier = models.get_model(FLAGS.model, input_shape=info.image_shape,
                                num_classes=info.num_classes)
  features = gradcam_lib.FeatureModel(classifier, models.get_spec(FLAGS.model).gradcam_layer)
  cam_fn = tf.function(lambda images, labels: gradcam_lib.gradcam(features.fn(), images, labels)[0])
  model_fn = lambda images: classifier(images, training=False)
  eps = 0.3 if info.name == 'mnist' else 8 / 255
  pgd_fn = tf.function(lambda images, labels: attacks.pgd(
      model_fn, images, labels, eps=eps, step_size=eps / 4, num_steps=FLAGS.pgd_steps))
  fwd_fn = tf.function(lambda images: model_fn(images))
  for fn, args in ((cam_fn, (x, y)), (pgd_fn, (x, y)), (fwd_fn, (x,))):
    fn(*args)
  reps = max(FLAGS.steps, 3)
  results['forward_images_per_s'] = b * reps / time_call(lambda: fwd_fn(x), reps)
  results['gradcam_images_per_s'] = b * reps / time_call(lambda: cam_fn(x, y), reps)
  pgd_rate = b * reps / time_call(lambda: pgd_fn(x, y), reps)
  results[f'pgd{FLAGS.pgd_steps}_images_per_s'] = pgd_rate
  flops = model_flops(classifier)
  peak = matmul_flops_per_second(timer=clock())
  achieved = pgd_rate * flops * 3 * FLAGS.pgd_steps
  results.update({'model_forward_gflop_per_image': flops / 1e9,
                  'matmul_gflop_per_s': peak / 1e9,
                  'pgd_achieved_gflop_per_s': achieved / 1e9,
                  'pgd_fraction_of_matmul_rate': achieved / peak})

  lines = [f'{FLAGS.model}/{FLAGS.dataset}, batch {b}, PGD-{FLAGS.pgd_steps}, '
           f'TF {tf.__version__}, {results["clock"]} clock',
           '| variant | images/s | step time vs madry |', '|---|---|---|']
  for v, rate in train.items():
    ratio = results.get('train_time_ratio_vs_madry', {}).get(v, float('nan'))
    lines.append(f'| {v} | {rate:.1f} | {ratio:.2f}x |')
  lines += ['',
            f'forward: {results["forward_images_per_s"]:.0f} images/s; '
            f'Grad-CAM: {results["gradcam_images_per_s"]:.0f} images/s '
            f'({results["gradcam_images_per_s"] / results["forward_images_per_s"]:.2f}x forward)',
            f'PGD-{FLAGS.pgd_steps}: {pgd_rate:.1f} images/s = {achieved / 1e9:.1f} GFLOP/s, '
            f'{100 * achieved / peak:.0f}% of the measured matmul rate ({peak / 1e9:.0f} GFLOP/s)']
  print('\n'.join(lines))
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(results, f, indent=2)
  logging.info('%s', json.dumps(results))


if __name__ == '__main__':
  app.run(main)
