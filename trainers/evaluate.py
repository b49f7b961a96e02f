r"""Robustness evaluation of a trained run or an exported model: attacks, worst case, diagnostics.

  python -m trainers.evaluate --model_dir=/tmp/mnist_madry --data_dir=../shared/data \
      --eval_examples=1000

  python -m trainers.evaluate --saved_model=/tmp/mnist_madry/export/saved_model \
      --dataset=mnist --data_dir=../shared/data --attacks=clean,pgd100,apgd_ce,square

With --model_dir the run's config.json gives the dataset, backbone, seed, evaluation eps
(--eval_eps of trainers.main) and Grad-CAM scaling, and the weights come from the newer of its
latest checkpoint and export/model.keras (aad_tf/runs.py; see --weights). With --saved_model (a
SavedModel directory, or a .keras file) pass --dataset; a SavedModel exposes logits only, so the
attacks that need Grad-CAM features (the A^3 attacks and `adaptive`) are skipped and listed as
such. The flags are defined in trainers/evaluate_flags.py and trainers/common_flags.py.

Writes robustness.json and robustness.md into --output_dir (default: the run directory, or the
directory holding the SavedModel) and prints the Markdown tables. Attack names: see
aad_tf/evaluation/; the default runs the whole suite. Gradient-masking diagnostics
(aad_tf/evaluation/diagnostics.py) run after the attacks unless --nodiagnostics.
"""

import os
import sys
import time

import keras
from absl import app
from absl import flags
from absl import logging

from aad_tf import data as data_lib
from aad_tf import evaluation
from aad_tf.evaluation import diagnostics as diagnostics_lib
from aad_tf import runs
from trainers import common_flags
from trainers import evaluate_flags
from trainers import flagfiles

FLAGS = flags.FLAGS


def define_flags() -> None:
  common_flags.define_common_flags()
  evaluate_flags.define_flags()
  # --help lists the flags of the main module only: make the defined ones its key flags.
  flags.adopt_module_key_flags(common_flags)
  flags.adopt_module_key_flags(evaluate_flags)


def load():
  """(evaluation.Target, dataset, model name, origin, default output dir, the run's TrainConfig).

  A --model_dir run by aad_tf/runs.py's rule (its TrainConfig gives the defaults of --data_dir,
  --data_source, --eps, --seed and --gradcam_normalize); a --saved_model has no TrainConfig
  (None).
  """
  if FLAGS.model_dir:
    try:
      run = runs.load_classifier(FLAGS.model_dir, source=FLAGS.weights,
                                 checkpoint=FLAGS.checkpoint)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    config = run.config
    return (evaluation.Target.from_keras(run.classifier, run.gradcam_layer), config.dataset,
            config.model, run.origin, FLAGS.model_dir, config)
  if not FLAGS['dataset'].present:
    raise app.UsageError('--saved_model needs --dataset.')
  try:
    exported = runs.load_exported(FLAGS.saved_model, gradcam_layer=FLAGS.gradcam_layer)
  except ValueError as e:
    raise app.UsageError(f'--saved_model / --gradcam_layer: {e}') from e
  return (exported.target, FLAGS.dataset, exported.name, exported.origin,
          os.path.dirname(os.path.abspath(FLAGS.saved_model.rstrip('/'))), None)


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

  target, dataset_name, model_name, origin, default_output_dir, config = load()
  if FLAGS.model_dir and FLAGS['dataset'].present and FLAGS.dataset != dataset_name:
    raise app.UsageError(f'--dataset={FLAGS.dataset} but the run was trained on '
                         f'{dataset_name}.')
  eps = FLAGS.eps
  if eps is None:
    eps = (config.eval_eps if config is not None and config.eval_eps is not None
           else data_lib.get_info(dataset_name).eval_eps)
  seed = FLAGS.seed if (FLAGS['seed'].present or config is None) else config.seed
  gradcam_normalize = (FLAGS.gradcam_normalize or
                       (config.defense.gradcam_normalize if config else None) or 'none')
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

  arrays = data_lib.load_arrays(
      dataset_name, data_dir=FLAGS.data_dir or (config.data_dir if config else None),
      source=FLAGS.data_source if FLAGS['data_source'].present or config is None
      else config.data_source, download=FLAGS.download)
  try:
    dataset = data_lib.eval_dataset(arrays, batch_size=FLAGS.batch_size,
                                    num_examples=FLAGS.eval_examples,
                                    first_example=FLAGS.eval_offset)
  except ValueError as e:
    raise app.UsageError(f'--eval_examples / --eval_offset: {e}') from e
  logging.info('Evaluating %s (%s) on %s, %s examples, eps %.4f, seed %d: %s.', model_name,
               origin, dataset_name, FLAGS.eval_examples or arrays.num_test, eps, seed,
               ', '.join(attacks))

  keras.utils.set_random_seed(seed)
  started = time.time()
  report = evaluation.evaluate(target, dataset, attacks, progress=sys.stdout.isatty(), seed=seed,
                               first_batch=FLAGS.eval_offset // FLAGS.batch_size)
  if FLAGS.diagnostics:
    checks = diagnostics_lib.run_all(
        target.model_fn, dataset, report, eps=eps, sweep_steps=FLAGS.sweep_steps,
        curve_steps=FLAGS.curve_steps, max_examples=FLAGS.diagnostic_examples, seed=seed)
    report.diagnostics = [check.to_json() for check in checks]
  wall_time = time.time() - started

  row_name = os.path.basename(os.path.normpath(FLAGS.model_dir or FLAGS.saved_model))
  table = evaluation.format_table(report, row_name=row_name)
  evaluation.write_robustness(
      FLAGS.output_dir or default_output_dir, report, table, row_name=row_name,
      dataset=dataset_name, model=model_name, source=origin, eps=eps, seed=seed,
      first_example=FLAGS.eval_offset, wall_time=wall_time,
      settings={'gradcam_normalize': gradcam_normalize,
                **{name: FLAGS[name].value for name in evaluate_flags.RECORDED}})
  # The tables are the binary's result: printed once, on stdout (the log says where they are
  # saved); the per-attack log lines are progress.
  fired = report.diagnostics_fired
  print(f'{table}\n\nWall time {wall_time:.1f} s. Diagnostics fired: '
        f'{", ".join(fired) or "none"}.', flush=True)


def run() -> None:
  """The console script `aad-evaluate`: the same as `python -m trainers.evaluate`."""
  flagfiles.run(main, define_flags)


if __name__ == '__main__':
  run()
