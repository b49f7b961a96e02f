"""Flags shared by every binary: where data and runs live, budgets, seed.

Every flag is optional so that tests and flagfiles set only what they need.
"""

import dataclasses
import os
import sys
from typing import List, Optional

from absl import app
from absl import flags

from aad_tf import data as data_lib
from aad_tf import training
from trainers import defense_flags

# Flags holding paths: flags.txt and config.json record them absolute, so that a run replays from
# any working directory, by one rule: os.path.abspath (normalised; symbolic links are kept as the
# user named them, not resolved, so a ../shared that is a link records .../shared).
PATH_FLAGS = ('data_dir', 'model_dir', 'manual_dir', 'pretrained_weights',
              *defense_flags.path_flags())


def define_common_flags() -> None:
  flags.DEFINE_string('data_dir', None,
                      'Directory with <dataset>.npz (x_train, y_train, x_test, y_test) or a '
                      'prepared TFDS dataset. Default: $TFDS_DATA_DIR or ~/tensorflow_datasets.')
  flags.DEFINE_enum('data_source', 'auto', ['auto', 'npz', 'tfds'],
                    'Where to read data: auto tries <dataset>.npz, then a prepared TFDS dir.')
  flags.DEFINE_bool('download', False, 'Allow a TFDS download (needs internet).')
  flags.DEFINE_enum('dataset', 'mnist', list(data_lib.available_datasets()), 'Dataset name.')
  flags.DEFINE_string('model_dir', None, 'Run directory: checkpoints, summaries, export, eval.')
  flags.DEFINE_integer('train_steps', None, 'Total training steps; overrides --epochs.',
                       lower_bound=1)
  flags.DEFINE_integer('eval_examples', None,
                       'Evaluate on the first N test examples (default: the whole test set).',
                       lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seed for weights, data order and attacks.', lower_bound=0)


def define_resume_flags() -> None:
  flags.DEFINE_bool('allow_config_change', False,
                    'Resume a --model_dir whose run was trained with other run-defining flags '
                    '(dataset, model, defense, AAD, attack, seed, ...); the change is recorded '
                    'in <model_dir>/config_changes.json.')


def absolute_path(path: Optional[str]) -> Optional[str]:
  """`path` made absolute (unchanged: None, '' and URLs such as gs://...)."""
  if not path or '://' in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def absolute_paths(config: training.TrainConfig) -> training.TrainConfig:
  """`config` with model_dir, data_dir, manual_dir, pretrained_weights and the defense's path
  hyperparameters (ensemble_models) absolute."""
  defense = config.defense.map_paths(absolute_path)
  return dataclasses.replace(
      config, model_dir=absolute_path(config.model_dir), data_dir=absolute_path(config.data_dir),
      manual_dir=absolute_path(config.manual_dir),
      pretrained_weights=absolute_path(config.pretrained_weights), defense=defense)


def is_project_module(module: str) -> bool:
  """Whether flags defined in `module` are the project's: trainers.*, or the binary being run.

  absl files the flags of the module run as __main__ under its path (sys.argv[0]).
  """
  return (module in ('__main__', sys.argv[0]) or module == 'trainers' or
          module.startswith('trainers.'))


def flags_text(flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """The project's flags as a flagfile that replays the run (`<model_dir>/flags.txt`).

  Only flags defined by the binaries (trainers.*), not absl's own (--verbosity,
  --test_tmpdir, ...); one `--name=value` a line, sorted by name; unset (None) flags omitted;
  the PATH_FLAGS absolute.

  Args:
    flag_values: the parsed flags.

  Returns:
    The flagfile's text.
  """
  chosen = {}
  for module, module_flags in flag_values.flags_by_module_dict().items():
    if is_project_module(module):
      chosen.update({flag.name: flag for flag in module_flags})
  lines: List[str] = []
  for name in sorted(chosen):
    flag = chosen[name]
    if flag.value is None:
      continue
    if name in PATH_FLAGS:
      value = flag.value
      if isinstance(value, (list, tuple)):
        lines.append(f'--{name}=' + ','.join(absolute_path(p) for p in value))
      else:
        lines.append(f'--{name}={absolute_path(value)}')
    else:
      lines.append(flag.serialize())
  return '\n'.join(lines) + '\n'


def parse_kappa(value: str):
  """--kappa: 'mean' or a number; anything else is a UsageError naming the flag."""
  if value == 'mean':
    return 'mean'
  try:
    return float(value)
  except ValueError:
    raise app.UsageError(f"--kappa must be 'mean' or a number, got {value!r}.") from None
