r"""Trains a classifier with adversarial training and AAD, exports it and evaluates it.

  python -m trainers.main --flagfile=flags/mnist_madry_aad.cfg --data_dir=../shared/data \
      --model_dir=/tmp/mnist_madry_aad --train_steps=50 --eval_examples=200

Writes into --model_dir: checkpoints/, tensorboard/, flags.txt, config.json, export/ and eval.json
(see WORKSPACE.md). Re-running with the same --model_dir resumes from the last checkpoint; a
changed run-defining flag (dataset, model, defense, AAD, attack, seed, ...) is refused unless
--allow_config_change. Nothing in --model_dir changes before the flags, the data, the model and
the existing run have been checked; an expected failure is one line on stderr (trainers/cli.py).
The flags are defined in trainers/train_flags.py and trainers/common_flags.py.
"""

import os
import sys
import time
from typing import Optional

from absl import app
from absl import flags

from aad_tf import checkpointing
from aad_tf import data as data_lib
from aad_tf import distribute
from aad_tf import evaluation
from aad_tf import export as export_lib
from aad_tf import model_card
from aad_tf import models
from aad_tf import overfitting
from aad_tf import runs
from aad_tf import summaries
from aad_tf import training
from trainers import common_flags
from trainers import flagfiles
from trainers import train_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  common_flags.define_common_flags()
  common_flags.define_resume_flags()
  train_flags.define_flags()
  # --help lists the flags of the main module only: make the defined ones its key flags.
  flags.adopt_module_key_flags(common_flags)
  flags.adopt_module_key_flags(train_flags)


def summary_callback(config: training.TrainConfig, arrays: data_lib.Arrays):
  """The TensorBoard callback of --summary_images, --summary_every, --aad_diagnostics_examples."""
  return summaries.train_summaries(
      config, arrays, num_images=FLAGS.summary_images, image_every=FLAGS.summary_every,
      diagnostic_examples=FLAGS.aad_diagnostics_examples)


def overfit_guard(config: training.TrainConfig, arrays: data_lib.Arrays):
  """The catastrophic-overfitting guard of --overfit_guard (None when off)."""
  return overfitting.make_guard(
      config, arrays, mode=FLAGS.overfit_guard, num_examples=FLAGS.overfit_guard_examples,
      every_steps=FLAGS.overfit_guard_every, pgd_steps=FLAGS.overfit_guard_pgd_steps,
      min_pgd_drop=FLAGS.overfit_guard_drop, batch_size=FLAGS.eval_batch_size,
      eval_examples=FLAGS.eval_examples)


def create_strategy():
  """The strategy of --devices / TF_CONFIG; call before any other TensorFlow work."""
  try:
    strategy = distribute.create_strategy(FLAGS.devices)
  except ValueError as e:
    raise app.UsageError(f'--devices: {e}') from e
  return strategy  # training.train logs it


def check_eval_examples(config: training.TrainConfig,
                        source: Optional[data_lib.TrainingData]) -> None:
  """--eval_examples must fit the test split: checked before training, not after it."""
  if FLAGS.eval_examples is None:
    return
  if source is None:  # the standard split, before loading it
    available, split = config.info.num_test, 'test'
  else:
    available, split = source.num_eval, source.eval_split
  if FLAGS.eval_examples > available:
    raise app.UsageError(f'--eval_examples={FLAGS.eval_examples} exceeds the {available} '
                         f'examples of the {config.dataset} {split} split.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  strategy = create_strategy()
  config = common_flags.absolute_paths(train_flags.config_from_flags())
  chief = distribute.is_chief(strategy)
  if chief:  # Cheap checks first: the run directory and the existing run.
    checkpointing.check_writable(config.model_dir)
    training.check_resume(config, FLAGS.allow_config_change)
  if not config.info.streamed:
    check_eval_examples(config, None)  # before loading: the standard test split
  if config.info.streamed and FLAGS.overfit_guard != 'off':
    raise app.UsageError(f'--overfit_guard needs an in-memory dataset, not {config.dataset}.')
  source = data_lib.training_data(config)
  check_eval_examples(config, source)
  arrays = source.arrays  # None when streamed
  guard = overfit_guard(config, arrays) if arrays is not None else None
  shown = arrays if arrays is not None or not FLAGS.summary_images else source.sample(
      FLAGS.summary_images)
  writer = summary_callback(config, shown) if shown is not None else None
  callbacks = [*([writer] if writer else []), *([guard] if guard else [])]
  started = time.time()
  # flags.txt is written with config.json, once train has checked the model and the checkpoint.
  model = training.train(config, source, callbacks=callbacks, strategy=strategy,
                         allow_config_change=FLAGS.allow_config_change,
                         run_files={'flags.txt': common_flags.flags_text()} if chief else None)
  train_wall_time = time.time() - started
  if not chief:
    return
  if FLAGS.export:
    export_lib.export_all(model.classifier, models.get_spec(config.model).gradcam_layer,
                          config.model_dir)
  attacks = evaluation.standard_attacks(FLAGS.eval_attacks, eps=config.eval_eps,
                                        seed=config.seed)
  report, table = runs.closing_evaluation(
      model, config, source.eval_dataset(batch_size=FLAGS.eval_batch_size,
                                          num_examples=FLAGS.eval_examples), attacks,
      train_wall_time=train_wall_time, guard=guard, writer=writer,
      progress=sys.stdout.isatty())
  # The table is the run's result: printed once, on stdout (the log says where it is saved).
  print(f'Closing evaluation (eps {config.eval_eps:.4f}, {report.num_examples} test examples), '
        f'accuracy (%):\n{table}', flush=True)
  if FLAGS.export:  # after eval.json, which the card lists
    model_card.write(config.model_dir, os.path.join(config.model_dir, 'export'))


def run() -> None:
  """The console script `aad-train`: the same as `python -m trainers.main`."""
  flagfiles.run(main, define_flags)


if __name__ == '__main__':
  run()
