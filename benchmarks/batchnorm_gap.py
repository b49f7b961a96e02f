r"""Is a run's inference-mode network the one its training loss trained? BatchNorm's two functions.

  python -m benchmarks.batchnorm_gap --data_dir=../shared/data \
      --runs=$AAD_TF_RUNS/cifar10_study/madry_s0@ckpt-500,$AAD_TF_RUNS/cifar10_study/X@ckpt-500 \
      --output=docs/results/cifar10_study/batchnorm_gap

For each run (a trainers.main directory, optionally @ a checkpoint name in its checkpoints/), the
clean accuracy on the first --examples test images three ways: in inference mode (moving
statistics: what every evaluation and the export use), on each batch's statistics (training mode,
the function the classification loss trains), and in inference mode after `batchnorm.recalibrate`
on --calibration_images training images (a fixed random draw). With the per-layer gap between the
moving and the recalibrated statistics. Inference far below the other two, which agree, means the
weights classify and the moving statistics do not fit them: the signature of AAD's attention terms
acting on the inference-mode network (docs/results/cifar10_study.md). Writes OUTPUT.json and
OUTPUT.md.

--calibrate_on=training_attack recalibrates on the run's own training attack's examples of those
images (crafted against the network recalibrated on the clean images first), the batches a Madry
loss normalises with; --save_dir=DIR saves each recalibrated classifier as DIR/<run>.keras, for
`trainers.evaluate --saved_model=DIR/<run>.keras --dataset=...`.
"""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import runs
from aad_tf.models import batchnorm

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_list('runs', None, 'RUN_DIR or RUN_DIR@CHECKPOINT_NAME (e.g. ckpt-500) entries.')
  flags.DEFINE_string('data_dir', None, "Data directory (default: each run's).")
  flags.DEFINE_integer('examples', 1000, 'First test images to classify.', lower_bound=100)
  flags.DEFINE_integer('calibration_images', 4000, 'Training images for recalibration.',
                       lower_bound=100)
  flags.DEFINE_integer('batch_size', 100, 'Images per batch (also the batch statistics).',
                       lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seed of the calibration images draw.')
  flags.DEFINE_enum('calibrate_on', 'clean', ['clean', 'training_attack'],
                    "Recalibrate on the clean images or on the run's training attack's examples.")
  flags.DEFINE_string('save_dir', None, 'Save each recalibrated classifier as DIR/<run>.keras.')
  flags.DEFINE_string('output', None, 'Output path without extension (.json and .md).')


def parse_entry(entry: str) -> tuple:
  """'DIR@ckpt-500' -> (DIR, DIR/checkpoints/ckpt-500); 'DIR' -> (DIR, None: the newest)."""
  run_dir, _, checkpoint = entry.partition('@')
  if not run_dir:
    raise ValueError(f'Empty run directory in --runs entry {entry!r}.')
  return run_dir, (os.path.join(run_dir, 'checkpoints', checkpoint) if checkpoint else None)


def training_attack_examples(loaded, config, x, y, batch_size: int) -> np.ndarray:
  """The run's training attack's examples of (x, y), crafted as its training step crafts them."""
  defense = dataclasses.replace(
      config.defense, aad=False,
      attack=dataclasses.replace(config.defense.attack, warmup_steps=0))  # its full eps
  model = defense_lib.AADModel(loaded.classifier, loaded.gradcam_layer, defense, seed=config.seed)
  model.compile(optimizer='sgd')
  craft = tf.function(lambda images, labels: model.base_defense.craft(
      model.inference_fn(), images, labels, model.step_config()))
  labels = np.asarray(y).reshape(-1).astype(np.int32)
  return np.concatenate([craft(tf.constant(x[i:i + batch_size]),
                               tf.constant(labels[i:i + batch_size])).numpy()
                         for i in range(0, len(x) - batch_size + 1, batch_size)])


def measure(run_dir: str, checkpoint, x_test, y_test, x_calibration, batch_size: int,
            y_calibration=None) -> dict:
  """One row; with y_calibration, recalibrates on the training attack's examples (see above)."""
  loaded = runs.load_classifier(run_dir, checkpoint=checkpoint)
  model = loaded.classifier
  weights = loaded.origin.replace(os.path.normpath(run_dir) + os.sep, '')  # relative to the run
  row = {'run': os.path.basename(os.path.normpath(run_dir)), 'origin': weights,
         'inference': batchnorm.accuracy(model, x_test, y_test, training=False,
                                         batch_size=batch_size),
         'batch_statistics': batchnorm.accuracy(model, x_test, y_test, training=True,
                                                batch_size=batch_size)}
  row['layers'] = [g.to_json() for g in batchnorm.statistics_gap(model, x_calibration,
                                                                 batch_size)]
  batchnorm.recalibrate(model, x_calibration, batch_size)
  if y_calibration is not None:
    adversarial = training_attack_examples(loaded, loaded.config, x_calibration, y_calibration,
                                           batch_size)
    batchnorm.recalibrate(model, adversarial, batch_size)
  row['recalibrated'] = batchnorm.accuracy(model, x_test, y_test, training=False,
                                           batch_size=batch_size)
  return row, model


def table(rows) -> str:
  lines = ['| run | weights | inference (moving stats) | batch statistics | recalibrated | '
           'largest mean shift (sd) | moving / batch variance (min - max) |',
           '|---|---|---|---|---|---|---|']
  for r in rows:
    shift = max(layer['max_mean_shift'] for layer in r['layers'])
    low = min(layer['variance_ratio'][0] for layer in r['layers'])
    high = max(layer['variance_ratio'][2] for layer in r['layers'])
    lines.append(f"| {r['run']} | {r['origin']} | {100 * r['inference']:.1f} | "
                 f"{100 * r['batch_statistics']:.1f} | {100 * r['recalibrated']:.1f} | "
                 f'{shift:.2f} | {low:.2f} - {high:.2f} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  if not FLAGS.runs:
    raise app.UsageError('--runs is required.')
  try:
    entries = [parse_entry(e) for e in FLAGS.runs]
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  rows, arrays = [], {}
  for run_dir, checkpoint in entries:
    config = runs.load_config(run_dir)  # its data, read once per dataset
    key = (config.dataset, FLAGS.data_dir or config.data_dir)
    if key not in arrays:
      arrays[key] = data_lib.load_arrays(config.dataset, data_dir=key[1],
                                         source=config.data_source)
    data = arrays[key]
    draw = np.random.default_rng(FLAGS.seed).choice(len(data.x_train), FLAGS.calibration_images,
                                                    replace=False)
    draw = np.sort(draw)
    row, recalibrated = measure(
        run_dir, checkpoint, data.x_test[:FLAGS.examples], data.y_test[:FLAGS.examples],
        data.x_train[draw], FLAGS.batch_size,
        y_calibration=data.y_train[draw] if FLAGS.calibrate_on == 'training_attack' else None)
    if FLAGS.save_dir:
      os.makedirs(FLAGS.save_dir, exist_ok=True)
      recalibrated.save(os.path.join(FLAGS.save_dir, row['run'] + '.keras'))
    print(row['run'], row['origin'], row['inference'], row['batch_statistics'],
          row['recalibrated'], flush=True)
    rows.append(row)
  settings = {'examples': FLAGS.examples, 'calibration_images': FLAGS.calibration_images,
              'batch_size': FLAGS.batch_size, 'seed': FLAGS.seed,
              'calibrate_on': FLAGS.calibrate_on}
  on = ('' if FLAGS.calibrate_on == 'clean' else
        " (the run's training-attack examples of them)")
  md = (f'Clean accuracy (%) on the first {FLAGS.examples} test images; recalibrated on '
        f'{FLAGS.calibration_images} training images{on} (seed {FLAGS.seed}).\n\n'
        f'{table(rows)}\n')
  print(md)
  if FLAGS.output:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output + '.json', 'w') as f:
      json.dump({'settings': settings, 'rows': rows}, f, indent=1)
    with open(FLAGS.output + '.md', 'w') as f:
      f.write(md)


if __name__ == '__main__':
  define_flags()
  app.run(main)
