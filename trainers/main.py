r"""Trains a classifier with adversarial training and AAD, exports it and evaluates it.

  python -m trainers.main --flagfile=flags/mnist_madry_aad.cfg --data_dir=../shared/data \
      --model_dir=/tmp/mnist_madry_aad --train_steps=50 --eval_examples=200

Writes into --model_dir: checkpoints/, tensorboard/, flags.txt, config.json, export/ and eval.json
(see WORKSPACE.md). Re-running with the same --model_dir resumes from the last checkpoint.
"""

import os

from absl import app
from absl import flags
from absl import logging

from aad_tf import data as data_lib
from aad_tf import defense as defense_lib
from aad_tf import evaluation
from aad_tf import export as export_lib
from aad_tf import models
from aad_tf import training
from trainers import common_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  common_flags.define_common_flags()
  flags.DEFINE_enum('model', 'lenet', list(models.available_models()), 'Classifier backbone.')
  flags.DEFINE_float('keep_prob', 0.5, 'Dropout keep probability (LeNet).', lower_bound=0.0,
                     upper_bound=1.0)
  flags.DEFINE_integer('batch_size', 100, 'Global batch size.', lower_bound=1)
  flags.DEFINE_float('epochs', 5, 'Training epochs (unless --train_steps).', lower_bound=0.0)
  flags.DEFINE_enum('optimizer', 'adam', list(training.OPTIMIZERS), 'Optimizer.')
  flags.DEFINE_float('learning_rate', 1e-3, 'Initial learning rate.', lower_bound=0.0)
  flags.DEFINE_float('lr_decay_rate', 1.0, 'Learning-rate factor every --lr_decay_epochs.',
                     lower_bound=0.0)
  flags.DEFINE_float('lr_decay_epochs', 1.0, 'Epochs between learning-rate decays.',
                     lower_bound=0.0)
  flags.DEFINE_float('momentum', 0.9, 'Momentum for sgd and rmsprop.', lower_bound=0.0)
  flags.DEFINE_enum('augment', 'none', ['none', 'pad_crop_flip'], 'Training augmentation.')
  flags.DEFINE_enum('defense', 'madry', sorted(defense_lib.BASE_DEFENSES),
                    'Base adversarial training.')
  flags.DEFINE_bool('aad', False, "Add AAD's rectification and preservation losses.")
  flags.DEFINE_float('alpha', 0.01, 'Weight of the rectification loss.', lower_bound=0.0)
  flags.DEFINE_float('beta', 0.01, 'Weight of the preservation loss.', lower_bound=0.0)
  flags.DEFINE_string('kappa', 'mean', "Attention threshold: 'mean' or a number.")
  flags.DEFINE_enum('classification_loss', 'ce', ['ce', 'soft_margin'],
                    'L_c: cross-entropy or multi-label soft margin (the paper).')
  flags.DEFINE_float('alp_weight', 0.5, 'Logit-pairing weight for --defense=alp.',
                     lower_bound=0.0)
  flags.DEFINE_float('train_eps', 0.3, 'L-inf radius of the training attack.', lower_bound=0.0,
                     upper_bound=1.0)
  flags.DEFINE_float('train_step_size', 0.01, 'Step size of the training PGD.', lower_bound=0.0)
  flags.DEFINE_integer('train_num_steps', 40, 'Steps of the training PGD.', lower_bound=0)
  flags.DEFINE_bool('train_random_init', True, 'Random start for the training PGD.')
  flags.DEFINE_integer('checkpoint_every', 500, 'Steps between checkpoints.', lower_bound=1)
  flags.DEFINE_integer('keep_checkpoints', 3, 'Checkpoints to keep.', lower_bound=1)
  flags.DEFINE_integer('log_every', 100, 'Steps between scalar summaries.', lower_bound=1)
  flags.DEFINE_list('eval_attacks', ['clean', 'fgsm', 'pgd20'],
                    'Closing evaluation attacks (clean, fgsm, stepll, pgd<k>, cw<k>).')
  flags.DEFINE_float('eval_eps', None, 'Evaluation eps (default: 0.3 MNIST, 8/255 CIFAR-10).',
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('eval_batch_size', 500, 'Evaluation batch size.', lower_bound=1)
  flags.DEFINE_bool('export', True, 'Export the classifier after training.')


def parse_kappa(value: str):
  if value == 'mean':
    return 'mean'
  try:
    return float(value)
  except ValueError:
    raise app.UsageError(f"--kappa must be 'mean' or a number, got {value!r}.") from None


def config_from_flags() -> training.TrainConfig:
  """Builds and validates the run's config; raises app.UsageError naming the bad flag."""
  if not FLAGS.model_dir:
    raise app.UsageError('--model_dir is required.')
  try:
    attack = defense_lib.AttackConfig(eps=FLAGS.train_eps, step_size=FLAGS.train_step_size,
                                      num_steps=FLAGS.train_num_steps,
                                      random_init=FLAGS.train_random_init)
    defense = defense_lib.DefenseConfig(
        defense=FLAGS.defense, aad=FLAGS.aad, alpha=FLAGS.alpha, beta=FLAGS.beta,
        kappa=parse_kappa(FLAGS.kappa), classification_loss=FLAGS.classification_loss,
        alp_weight=FLAGS.alp_weight, attack=attack)
    config = training.TrainConfig(
        model_dir=FLAGS.model_dir, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
        data_source=FLAGS.data_source, download=FLAGS.download, model=FLAGS.model,
        keep_prob=FLAGS.keep_prob, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
        train_steps=FLAGS.train_steps, optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate, lr_decay_rate=FLAGS.lr_decay_rate,
        lr_decay_epochs=FLAGS.lr_decay_epochs, momentum=FLAGS.momentum,
        augment=None if FLAGS.augment == 'none' else FLAGS.augment, seed=FLAGS.seed,
        defense=defense, checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints, log_every=FLAGS.log_every)
    evaluation.standard_attacks(FLAGS.eval_attacks, eps=eval_eps())
  except ValueError as e:
    raise app.UsageError(f'Invalid flags: {e}') from e
  return config


def eval_eps() -> float:
  return FLAGS.eval_eps if FLAGS.eval_eps is not None else evaluation.DEFAULT_EPS[FLAGS.dataset]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = config_from_flags()
  training.write_flags(config.model_dir, FLAGS.flags_into_string())
  arrays = data_lib.load_arrays(config.dataset, data_dir=config.data_dir,
                                source=config.data_source, download=config.download)
  model = training.train(config, arrays)
  classifier, layer = model.classifier, models.get_spec(config.model).gradcam_layer
  if FLAGS.export:
    export_lib.export_all(classifier, layer, config.model_dir)
  dataset = data_lib.eval_dataset(arrays, batch_size=FLAGS.eval_batch_size,
                                  num_examples=FLAGS.eval_examples)
  eps = eval_eps()
  report = evaluation.evaluate(classifier, dataset,
                               evaluation.standard_attacks(FLAGS.eval_attacks, eps=eps,
                                                           seed=config.seed))
  table = evaluation.format_table(report, row_name=os.path.basename(config.model_dir.rstrip('/')))
  logging.info('Closing evaluation (eps %.4f):\n%s', eps, table)
  print(table)
  training.write_json(os.path.join(config.model_dir, 'eval.json'),
                      {'dataset': config.dataset, 'model': config.model, 'eps': eps,
                       'seed': config.seed, **report.to_json()})


if __name__ == '__main__':
  define_flags()
  app.run(main)
