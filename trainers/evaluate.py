r"""Robustness evaluation of a trained run or of an exported model: attacks, worst case, diagnostics.

  python -m trainers.evaluate --model_dir=/tmp/mnist_madry --data_dir=../shared/data \
      --eval_examples=1000

  python -m trainers.evaluate --saved_model=/tmp/mnist_madry/export/saved_model \
      --dataset=mnist --data_dir=../shared/data --attacks=clean,pgd100,apgd_ce,square

With --model_dir the run's config.json gives the dataset, backbone and seed, its flags.txt the
evaluation eps (--eval_eps), and the weights come from the newer of its latest checkpoint and
export/model.keras (aad_tf/runs.py; see --weights). With --saved_model (a SavedModel directory, or a .keras file) pass
--dataset; a SavedModel exposes logits only, so the attacks that need Grad-CAM features (the A^3
attacks and `adaptive`) are skipped and listed as such.

Writes robustness.json and robustness.md into --output_dir (default: the run directory, or the
directory holding the SavedModel) and prints the Markdown tables. Attack names: see
aad_tf/evaluation/; the default runs the whole suite. Gradient-masking diagnostics
(aad_tf/evaluation/diagnostics.py) run after the attacks unless --nodiagnostics.
"""

import os
import platform
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from aad_tf import data as data_lib
from aad_tf import evaluation
from aad_tf.evaluation import diagnostics as diagnostics_lib
from aad_tf import files
from aad_tf import gradcam as gradcam_lib
from aad_tf import models
from aad_tf import runs
from trainers import common_flags
from trainers import flagfiles

FLAGS = flags.FLAGS


def define_flags() -> None:
  common_flags.define_common_flags()
  flags.DEFINE_string('saved_model', None,
                      'An exported SavedModel directory or .keras file to evaluate instead of '
                      'a --model_dir run (needs --dataset).')
  flags.DEFINE_enum('weights', 'auto', ['auto', 'keras', 'checkpoint'],
                    'With --model_dir: auto (the newer of the latest checkpoint and '
                    'export/model.keras, see aad_tf/runs.py), keras or checkpoint.')
  flags.DEFINE_string('checkpoint', None,
                      'With --model_dir: a checkpoint path (<model_dir>/checkpoints/ckpt-<step>).')
  flags.DEFINE_string('gradcam_layer', None,
                      'Grad-CAM layer of a --saved_model .keras file (default: the registry '
                      "entry of the model's name).")
  flags.DEFINE_string('output_dir', None,
                      'Where to write robustness.json/.md (default: the run directory).')
  flags.DEFINE_list('attacks', list(evaluation.ALL_ATTACKS),
                    'Attacks to run, a subset of: ' + ', '.join(evaluation.ALL_ATTACKS) +
                    ' (also fab_t, autoattack, pgd<k>, cw<k>, pgd<k>_r<n>, cw<k>_r<n>, '
                    'iter_stepll<k>).')
  flags.DEFINE_float('eps', None,
                     "L-inf radius in [0, 1] (default: the run's --eval_eps, else the dataset's "
                     'eval_eps, aad_tf/data/catalog.py).')
  flags.DEFINE_integer('batch_size', 500, 'Evaluation batch size.', lower_bound=1)
  flags.DEFINE_integer('eval_offset', 0,
                       'Index of the first test example (a multiple of --batch_size): '
                       'evaluates [offset, offset + eval_examples) with the random starts a '
                       'single evaluation from 0 would use there, so pieces can be merged.',
                       lower_bound=0)
  flags.DEFINE_float('sigma', 10.0, 'A^3 weight of the attention term (paper: 10).',
                     lower_bound=0.0)
  flags.DEFINE_string('kappa', 'mean', "A^3 attention threshold: 'mean' or a number.")
  flags.DEFINE_enum('gradcam_normalize', None, list(gradcam_lib.NORMALIZATIONS),
                    "A^3's Grad-CAM scaling (default: the run's own --gradcam_normalize, else "
                    "'none'); the same map that AAD trains with (aad_tf.gradcam).")
  flags.DEFINE_integer('a3_num_steps', 10,
                       'Steps of iter_stepll, iter_stepll_a3 and pgd_a3 (paper: 3 on ImageNet).',
                       lower_bound=1)
  flags.DEFINE_integer('apgd_num_steps', 100, 'APGD iterations per restart.', lower_bound=1)
  flags.DEFINE_integer('apgd_restarts', 1, 'APGD random restarts.', lower_bound=1)
  flags.DEFINE_integer('apgd_target_classes', 9, 'Target classes of apgd_t and fab_t.',
                       lower_bound=1)
  flags.DEFINE_integer('square_queries', 1000, 'Square Attack query budget per example.',
                       lower_bound=1)
  flags.DEFINE_float('square_p_init', 0.8, 'Square Attack initial fraction of changed pixels.',
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('adaptive_num_steps', 100, 'Steps of the adaptive attack.', lower_bound=1)
  flags.DEFINE_float('adaptive_weight', 1.0,
                     'Adaptive attack: weight of the relative Grad-CAM shift.', lower_bound=0.0)
  flags.DEFINE_bool('diagnostics', True, 'Run the gradient-masking diagnostics.')
  flags.DEFINE_integer('diagnostic_examples', 500,
                       'Examples used by the diagnostics that query the model.', lower_bound=1)
  flags.DEFINE_integer('sweep_steps', 20, 'PGD steps per eps of the diagnostic eps sweep.',
                       lower_bound=1)
  flags.DEFINE_integer('curve_steps', 20, 'PGD steps of the diagnostic loss curve.',
                       lower_bound=1)


def read_flagfile(path: str) -> dict:
  """`--name=value` lines of a run's flags.txt as {name: value} (`--noname` -> 'false')."""
  values = {}
  if not tf.io.gfile.exists(path):
    return values
  with tf.io.gfile.GFile(path) as f:
    for line in f:
      line = line.strip()
      if not line.startswith('--'):
        continue
      name, sep, value = line[2:].partition('=')
      if sep:
        values[name] = value
      elif name.startswith('no'):
        values[name[2:]] = 'false'
      else:
        values[name] = 'true'
  return values


class Source:
  """What is evaluated: target, dataset name, defaults taken from the run, where to write."""

  def __init__(self, target, dataset, model_name, origin, output_dir, data_dir=None,
               data_source='auto', eps=None, seed=None, gradcam_normalize=None):
    self.target, self.dataset, self.model_name, self.origin = target, dataset, model_name, origin
    self.output_dir, self.data_dir, self.data_source = output_dir, data_dir, data_source
    self.eps, self.seed, self.gradcam_normalize = eps, seed, gradcam_normalize


def load_run(model_dir: str) -> Source:
  """The classifier of a trainers.main run, with its dataset, eps and seed."""
  try:
    run = runs.load_classifier(model_dir, source=FLAGS.weights, checkpoint=FLAGS.checkpoint)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  config, classifier, layer, origin = run.config, run.classifier, run.gradcam_layer, run.origin
  run_flags = read_flagfile(os.path.join(model_dir, 'flags.txt'))
  eps = float(run_flags['eval_eps']) if run_flags.get('eval_eps') not in (None, '', 'None') \
      else None
  return Source(evaluation.Target.from_keras(classifier, layer), config.dataset, config.model,
                origin, model_dir, config.data_dir, config.data_source, eps, config.seed,
                config.defense.gradcam_normalize)


def load_exported(path: str) -> Source:
  """An exported SavedModel directory or .keras file; the dataset comes from --dataset."""
  if not FLAGS['dataset'].present:
    raise app.UsageError('--saved_model needs --dataset.')
  if not tf.io.gfile.exists(path):
    raise app.UsageError(f'--saved_model {path} does not exist.')
  output_dir = os.path.dirname(os.path.abspath(path.rstrip('/')))
  if path.endswith('.keras'):
    classifier = keras.models.load_model(path, safe_mode=True, compile=False)
    layer = FLAGS.gradcam_layer
    if layer is None and classifier.name in models.available_models():
      layer = models.get_spec(classifier.name).gradcam_layer
    if layer is None:
      logging.warning('No Grad-CAM layer for %s (pass --gradcam_layer): A^3 and adaptive '
                      'attacks will be skipped.', path)
    try:
      target = evaluation.Target.from_keras(classifier, layer)
    except ValueError as e:
      raise app.UsageError(f'--gradcam_layer: {e}') from e
    return Source(target, FLAGS.dataset, classifier.name, path, output_dir)
  try:
    target = evaluation.Target.from_saved_model(path)
  except (ValueError, OSError, tf.errors.OpError) as e:
    raise app.UsageError(f'Cannot load --saved_model {path}: {e}') from e
  return Source(target, FLAGS.dataset, 'saved_model', path, output_dir)


def versions() -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                            text=True, timeout=10).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    commit = None
  return {'python': platform.python_version(), 'tensorflow': tf.__version__,
          'keras': keras.__version__, 'numpy': np.__version__, 'aad_tf_commit': commit}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if bool(FLAGS.model_dir) == bool(FLAGS.saved_model):
    raise app.UsageError('Pass exactly one of --model_dir and --saved_model.')
  kappa = common_flags.parse_kappa(FLAGS.kappa)
  if FLAGS.eval_offset % FLAGS.batch_size:
    raise app.UsageError(f'--eval_offset={FLAGS.eval_offset} must be a multiple of '
                         f'--batch_size={FLAGS.batch_size} (the random starts are per batch).')
  try:
    # Validate names and eps before loading anything: either is an immediate, clear error.
    evaluation.standard_attacks(FLAGS.attacks, eps=0.0 if FLAGS.eps is None else FLAGS.eps)
  except ValueError as e:
    raise app.UsageError(f'--attacks / --eps: {e}') from e

  source = load_run(FLAGS.model_dir) if FLAGS.model_dir else load_exported(FLAGS.saved_model)
  if FLAGS.model_dir and FLAGS['dataset'].present and FLAGS.dataset != source.dataset:
    raise app.UsageError(f'--dataset={FLAGS.dataset} but the run was trained on '
                         f'{source.dataset}.')
  eps = FLAGS.eps
  if eps is None:
    eps = source.eps if source.eps is not None else data_lib.get_info(source.dataset).eval_eps
  seed = FLAGS.seed if (FLAGS['seed'].present or source.seed is None) else source.seed
  gradcam_normalize = FLAGS.gradcam_normalize or source.gradcam_normalize or 'none'
  try:
    attacks = evaluation.standard_attacks(
        FLAGS.attacks, eps=eps, seed=seed, sigma=FLAGS.sigma, kappa=kappa,
        gradcam_normalize=gradcam_normalize,
        a3_num_steps=FLAGS.a3_num_steps, apgd_num_steps=FLAGS.apgd_num_steps,
        apgd_restarts=FLAGS.apgd_restarts, apgd_target_classes=FLAGS.apgd_target_classes,
        square_queries=FLAGS.square_queries, square_p_init=FLAGS.square_p_init,
        adaptive_num_steps=FLAGS.adaptive_num_steps, adaptive_weight=FLAGS.adaptive_weight)
  except ValueError as e:
    raise app.UsageError(f'Invalid attack flags: {e}') from e

  arrays = data_lib.load_arrays(source.dataset, data_dir=FLAGS.data_dir or source.data_dir,
                                source=FLAGS.data_source if FLAGS['data_source'].present
                                else source.data_source, download=FLAGS.download)
  try:
    dataset = data_lib.eval_dataset(arrays, batch_size=FLAGS.batch_size,
                                    num_examples=FLAGS.eval_examples,
                                    first_example=FLAGS.eval_offset)
  except ValueError as e:
    raise app.UsageError(f'--eval_examples / --eval_offset: {e}') from e
  logging.info('Evaluating %s (%s) on %s, %s examples, eps %.4f, seed %d: %s.',
               source.model_name, source.origin, source.dataset,
               FLAGS.eval_examples or arrays.num_test, eps, seed, ', '.join(attacks))

  keras.utils.set_random_seed(seed)
  started = time.time()
  report = evaluation.evaluate(source.target, dataset, attacks, progress=sys.stdout.isatty(), seed=seed,
                               first_batch=FLAGS.eval_offset // FLAGS.batch_size)
  if FLAGS.diagnostics:
    checks = diagnostics_lib.run_all(
        source.target.model_fn, dataset, report, eps=eps, sweep_steps=FLAGS.sweep_steps,
        curve_steps=FLAGS.curve_steps, max_examples=FLAGS.diagnostic_examples, seed=seed)
    report.diagnostics = [check.to_json() for check in checks]
  wall_time = time.time() - started

  row_name = os.path.basename(os.path.normpath(FLAGS.model_dir or FLAGS.saved_model))
  table = evaluation.format_table(report, row_name=row_name)
  output_dir = FLAGS.output_dir or source.output_dir
  tf.io.gfile.makedirs(output_dir)
  payload = {'dataset': source.dataset, 'model': source.model_name, 'source': source.origin,
             'eps': eps, 'seed': seed, 'first_example': FLAGS.eval_offset,
             'wall_time_s': wall_time, 'versions': versions(),
             'settings': {'gradcam_normalize': gradcam_normalize, **{
                 name: FLAGS[name].value for name in (
                 'sigma', 'kappa', 'a3_num_steps', 'apgd_num_steps', 'apgd_restarts',
                 'apgd_target_classes', 'square_queries', 'square_p_init',
                 'adaptive_num_steps', 'adaptive_weight', 'diagnostic_examples', 'sweep_steps',
                 'curve_steps', 'batch_size')}},
             **report.to_json()}
  files.write_json(os.path.join(output_dir, 'robustness.json'), payload)
  header = (f'# Robustness of {row_name}\n\n{source.dataset}, eps {eps:.4f}, '
            f'{report.num_examples} test examples, seed {seed}, {wall_time:.0f} s.\n'
            f'Accuracy (%) per attack; worst_case = correct under every attack.\n\n')
  with tf.io.gfile.GFile(os.path.join(output_dir, 'robustness.md'), 'w') as f:
    f.write(header + table + '\n')
  print(table)
  fired = report.diagnostics_fired
  print(f'\nWall time {wall_time:.1f} s. Diagnostics fired: {", ".join(fired) or "none"}.')
  logging.info('Wrote %s/robustness.json and robustness.md.', output_dir)


def run() -> None:
  """The console script `aad-evaluate`: the same as `python -m trainers.evaluate`."""
  flagfiles.run(main, define_flags)


if __name__ == '__main__':
  run()
