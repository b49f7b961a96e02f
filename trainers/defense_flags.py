"""The flags of the base defenses' hyperparameters, generated from the defense registry.

Each field of a registered defense's `Hyperparameters` dataclass (aad_tf.defenses.base) becomes
one flag of the same name, default and help: bool -> DEFINE_bool, int -> DEFINE_integer and
float -> DEFINE_float (with the field's bounds), str -> DEFINE_enum with its choices (else
DEFINE_string), tuple[str, ...] -> DEFINE_list. A hyperparameter shared by several defenses (e.g.
stepll_random_step of stepll and ensemble) is one flag. A new defense's flags need no edit here.
"""

import typing
from typing import Any

from absl import flags

from aad_tf import defenses


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines one flag per hyperparameter of every registered base defense."""
  for name, (field, kind) in sorted(defenses.all_hyperparameters().items()):
    meta = field.metadata
    bounds = dict(lower_bound=meta.get('lower_bound'), upper_bound=meta.get('upper_bound'))
    if kind is bool:
      flags.DEFINE_bool(name, field.default, meta['help'], flag_values=flag_values)
    elif kind is int:
      flags.DEFINE_integer(name, field.default, meta['help'], flag_values=flag_values, **bounds)
    elif kind is float:
      flags.DEFINE_float(name, field.default, meta['help'], flag_values=flag_values, **bounds)
    elif kind is str and meta.get('choices') is not None:
      flags.DEFINE_enum(name, field.default, list(meta['choices']), meta['help'],
                        flag_values=flag_values)
    elif kind is str:
      flags.DEFINE_string(name, field.default, meta['help'], flag_values=flag_values)
    elif typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, ...):
      flags.DEFINE_list(name, list(field.default), meta['help'], flag_values=flag_values)
    else:
      raise ValueError(f'Hyperparameter {name!r} has type {kind}; flags exist for bool, int, '
                       f'float, str and tuple[str, ...].')


def hparams_from_flags(defense: str, flag_values: flags.FlagValues = flags.FLAGS
                       ) -> dict[str, Any]:
  """{name: flag value} of the hyperparameters of base defense `defense` (for DefenseConfig)."""
  spec = defenses.get_defense(defense).hyperparameters
  return {field.name: flag_values[field.name].value
          for field, _ in defenses.hyperparameter_fields(spec)}


def path_flags() -> tuple[str, ...]:
  """The hyperparameter flags holding paths (made absolute in flags.txt)."""
  return tuple(sorted(name for name, (field, _) in defenses.all_hyperparameters().items()
                      if field.metadata.get('path')))
