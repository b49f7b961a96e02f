r"""ResNet9 / CIFAR-10 training throughput, Madry vs Madry + AAD at the same PGD steps, in one run.

  python -m benchmarks.train_throughput_resnet9 --data_dir=../shared/data
  python -m benchmarks.train_throughput_resnet9 --mixed_precision=float32,bfloat16
  python -m benchmarks.train_throughput_resnet9 --mixed_precision=bfloat16 --jit_compile   # GPU

Each variant is the real training path at the paper's CIFAR-10 settings (flags/cifar10_base.cfg:
ResNet9, batch 100, Adam, PGD 7 x 2/255 at eps 8/255, pad-crop-flip input pipeline), built by
`aad_tf.training.build_model` under the strategy of --devices and trained with `model.fit` on
`aad_tf.data.train_dataset`. After one warm-up fit (tracing), the variants run round-robin for
--rounds rounds of --steps steps (interleaving spreads machine noise over both); a step is timed
from the end of the previous one, so tracing and iterator start-up are excluded. Reported: median
images/s by wall clock and by this process's CPU time (robust to other jobs on a shared CPU
machine), and the AAD step time relative to Madry. --mixed_precision lists the precisions to
compare: every variant is built in each (float32, or mixed_bfloat16) and all run in the same
round-robin; the header names the CPU and its bfloat16 support (AMX, AVX512_BF16 or none).
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

from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import distribute
from aad_tf import precision
from aad_tf import training

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the benchmark's flags (called from __main__, so importing defines none)."""
  flags.DEFINE_string('data_dir', None, 'Directory with cifar10.npz; random images if unset.')
  flags.DEFINE_list('variants', ['madry', 'madry_aad'], 'Variants: <defense>[_aad].')
  flags.DEFINE_integer('batch_size', 100, 'Global batch size (paper: 100).', lower_bound=1)
  flags.DEFINE_integer('pgd_steps', 7, 'PGD steps of every variant (paper: 7).', lower_bound=0)
  flags.DEFINE_integer('steps', 5, 'Timed steps per variant per round.', lower_bound=1)
  flags.DEFINE_integer('rounds', 3, 'Round-robin rounds.', lower_bound=1)
  flags.DEFINE_list('devices', [],
                    'Devices to mirror over (default: every visible GPU, else CPU).')
  flags.DEFINE_list('mixed_precision', ['float32'],
                    'Precisions to compare in one run: float32, bfloat16 (mixed_bfloat16), auto.')
  flags.DEFINE_bool('jit_compile', None, 'XLA (default: Keras decides).')
  flags.DEFINE_string('output', None, 'Optional JSON output path.')

class StepTimer(keras.callbacks.Callback):
  """Wall and CPU seconds from the end of the first batch of a fit to the end of its last."""

  def on_train_begin(self, logs=None):
    self.marks = []

  def on_train_batch_end(self, batch, logs=None):
    float(logs['loss'])  # the step's outputs are ready
    self.marks.append((time.perf_counter(), time.process_time()))

  def seconds(self):
    (w0, c0), (w1, c1) = self.marks[0], self.marks[-1]
    return w1 - w0, c1 - c0


def variant_config(variant: str, model_dir: str,
                   dtype: str = 'float32') -> training.TrainConfig:
  defense, _, aad = variant.partition('_')
  return training.TrainConfig(
      model_dir=model_dir, dataset='cifar10', model='resnet9', batch_size=FLAGS.batch_size,
      optimizer='adam', learning_rate=1e-4, augment='pad_crop_flip',
      mixed_precision=dtype, jit_compile=FLAGS.jit_compile,
      defense=defense_lib.DefenseConfig(
          defense='none' if defense == 'raw' else defense, aad=aad == 'aad',
          attack=defense_lib.AttackConfig(eps=8 / 255, step_size=2 / 255,
                                          num_steps=FLAGS.pgd_steps)))


def load_arrays() -> data_lib.Arrays:
  if FLAGS.data_dir:
    return data_lib.load_arrays('cifar10', data_dir=FLAGS.data_dir, source='npz')
  rng = np.random.default_rng(0)
  n = 10 * FLAGS.batch_size
  x = rng.random((n, 32, 32, 3), dtype=np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  return data_lib.Arrays(x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])


def main(argv):
  del argv
  strategy = distribute.create_strategy(FLAGS.devices)
  logging.info('Strategy: %s', distribute.describe(strategy))
  try:
    precisions = list(dict.fromkeys(precision.resolve(p) for p in FLAGS.mixed_precision))
  except ValueError as e:
    raise app.UsageError(f'--mixed_precision: {e}') from e
  machine = precision.read_cpuinfo()
  arrays = load_arrays()
  models, timer, position = {}, StepTimer(), {}
  for dtype in precisions:
    for variant in FLAGS.variants:
      # One precision keeps the earlier names; several are told apart as madry/bfloat16.
      name = variant if len(precisions) == 1 else f'{variant}/{dtype}'
      config = variant_config(variant, 'unused', dtype)  # build_model writes nothing
      models[name] = (config, training.build_model(config, arrays.num_train, strategy))
      position[name] = 0

  def run(variant, steps):
    config, model = models[variant]
    dataset = distribute.distribute_batches(
        strategy, lambda: data_lib.train_dataset(
            arrays, batch_size=config.batch_size, seed=0, start_step=position[variant],
            num_steps=steps, augment=config.augment),
        global_batch_size=config.batch_size)
    position[variant] += steps
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return timer.seconds()

  started = time.perf_counter()
  for variant in models:
    run(variant, 2)  # trace and warm up
  logging.info('Warm-up (tracing) took %.1f s.', time.perf_counter() - started)
  wall = {v: [] for v in models}
  cpu = {v: [] for v in models}
  for _ in range(FLAGS.rounds):
    for variant in models:
      wall_s, cpu_s = run(variant, FLAGS.steps + 1)  # the first step only starts the clock
      wall[variant].append(FLAGS.batch_size * FLAGS.steps / wall_s)
      cpu[variant].append(FLAGS.batch_size * FLAGS.steps / cpu_s)
  device = (tf.config.list_physical_devices('GPU') or tf.config.list_physical_devices('CPU'))
  results = {
      'model': 'resnet9', 'dataset': 'cifar10', 'batch_size': FLAGS.batch_size,
      'pgd_steps': FLAGS.pgd_steps, 'replicas': strategy.num_replicas_in_sync,
      'strategy': distribute.describe(strategy), 'device': device[0].name,
      'mixed_precision': precisions,
      'cpu': {'model_name': machine.model_name, 'bf16_support': machine.bf16_support},
      'jit_compile': {v: bool(m.jit_compile) for v, (_, m) in models.items()},
      'tensorflow': tf.__version__, 'keras': keras.__version__,
      'wall_images_per_s': {v: statistics.median(r) for v, r in wall.items()},
      'cpu_images_per_s': {v: statistics.median(r) for v, r in cpu.items()},
      'rounds_wall_images_per_s': wall, 'rounds_cpu_images_per_s': cpu,
  }
  lines = [f'ResNet9/CIFAR-10, batch {FLAGS.batch_size}, PGD-{FLAGS.pgd_steps}, '
           f'{results["strategy"]}, mixed_precision={",".join(precisions)}, '
           f'TF {tf.__version__}, CPU {precision.describe_cpu(machine)}',
           '| variant | images/s (wall) | images/s (per CPU-second) | '
           'step time vs madry (wall, cpu) |',
           '|---|---|---|---|']
  for v in models:
    ratios = ('-', '-')
    madry = 'madry' if len(precisions) == 1 else f'madry/{models[v][0].mixed_precision}'
    if madry in models:
      ratios = (f'{results["wall_images_per_s"][madry] / results["wall_images_per_s"][v]:.2f}x',
                f'{results["cpu_images_per_s"][madry] / results["cpu_images_per_s"][v]:.2f}x')
    lines.append(f'| {v} | {results["wall_images_per_s"][v]:.1f} | '
                 f'{results["cpu_images_per_s"][v]:.1f} | {ratios[0]}, {ratios[1]} |')
  if {'float32', 'bfloat16'} <= set(precisions):
    results['bfloat16_speedup_cpu'] = {
        v: results['cpu_images_per_s'][f'{v}/bfloat16'] / results['cpu_images_per_s'][f'{v}/float32']
        for v in FLAGS.variants}
    lines.append('bfloat16 / float32 images per CPU-second: ' + ', '.join(
        f'{v} {r:.2f}x' for v, r in results['bfloat16_speedup_cpu'].items()))
  # The table is the benchmark's result: printed once, on stdout; the JSON goes to --output.
  print('\n'.join(lines), flush=True)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(results, f, indent=2)
    logging.info('Wrote %s.', FLAGS.output)


if __name__ == '__main__':
  define_flags()
  app.run(main)
