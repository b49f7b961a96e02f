"""Flags shared by every binary: where data and runs live, budgets, seed.

Every flag is optional so that tests and flagfiles set only what they need.
"""

from absl import app
from absl import flags

from aad_tf import data as data_lib


def define_common_flags() -> None:
  flags.DEFINE_string('data_dir', None,
                      'Directory with <dataset>.npz (x_train, y_train, x_test, y_test) or a '
                      'prepared TFDS dataset. Default: $TFDS_DATA_DIR or ~/tensorflow_datasets.')
  flags.DEFINE_enum('data_source', 'auto', ['auto', 'npz', 'tfds'],
                    'Where to read data: auto tries <dataset>.npz, then a prepared TFDS dir.')
  flags.DEFINE_bool('download', False, 'Allow a TFDS download (needs internet).')
  flags.DEFINE_enum('dataset', 'mnist', sorted(data_lib.DATASETS), 'Dataset name.')
  flags.DEFINE_string('model_dir', None, 'Run directory: checkpoints, summaries, export, eval.')
  flags.DEFINE_integer('train_steps', None, 'Total training steps; overrides --epochs.',
                       lower_bound=1)
  flags.DEFINE_integer('eval_examples', None,
                       'Evaluate on the first N test examples (default: the whole test set).',
                       lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seed for weights, data order and attacks.', lower_bound=0)


def parse_kappa(value: str):
  """--kappa: 'mean' or a number; anything else is a UsageError naming the flag."""
  if value == 'mean':
    return 'mean'
  try:
    return float(value)
  except ValueError:
    raise app.UsageError(f"--kappa must be 'mean' or a number, got {value!r}.") from None
