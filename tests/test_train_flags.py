"""Tests for trainers/train_flags.py's --mixed_precision (issue 25): auto | float32 | bfloat16, the
bool forms of the earlier flag, and its flags.txt line."""

import pytest
from absl import flags

from trainers import train_flags


def parse(*args):
  values = flags.FlagValues()
  train_flags.define_precision_flag('mixed_precision', 'float32', 'Training precision.',
                                    flag_values=values)
  flags.DEFINE_bool('jit_compile', None, 'XLA.', flag_values=values)
  values(['prog', *args])
  return values


@pytest.mark.parametrize('args, expected', [
    ((), 'float32'),
    (('--mixed_precision=auto',), 'auto'),
    (('--mixed_precision=float32',), 'float32'),
    (('--mixed_precision=bfloat16',), 'bfloat16'),
    (('--mixed_precision',), 'bfloat16'),        # the earlier bool flag's forms
    (('--nomixed_precision',), 'float32'),
    (('--mixed_precision=true',), 'bfloat16'),
    (('--mixed_precision', '--jit_compile'), 'bfloat16')])  # takes no value from the next flag
def test_mixed_precision_values_and_bool_forms(args, expected):
  values = parse(*args)
  assert values.mixed_precision == expected
  # flags.txt replays the value itself (not --mixed_precision, which would read as bfloat16).
  assert values['mixed_precision'].serialize() == f'--mixed_precision={expected}'
  assert parse(values['mixed_precision'].serialize()).mixed_precision == expected


def test_unknown_mixed_precision_is_a_flag_error_naming_the_choices():
  with pytest.raises(flags.IllegalFlagValueError,
                     match='mixed_precision must be one of auto, float32, bfloat16'):
    parse('--mixed_precision=fp16')
