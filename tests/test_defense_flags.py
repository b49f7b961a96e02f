"""Tests for trainers/defense_flags.py: the hyperparameter flags generated from the registry are
the hand-written ones they replace, flagfiles of every family parse, and values reach the config."""

import pathlib

import numpy as np
import pytest
from absl import app
from absl import flags

from aad_tf import data as data_lib
from aad_tf import overfitting
from defense_models import tiny_classifier
from trainers import common_flags
from trainers import defense_flags
from trainers import main
from trainers import train_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The flags trainers/main.py defined by hand before they were generated: (class, default, help,
# lower bound, enum values; absl puts an enum's values before its help). Flagfiles and flags.txt
# of older runs use these names.
HAND_WRITTEN = {
    'alp_weight': ('FloatParser', 0.5, 'Logit-pairing weight for --defense=alp.', 0.0, None),
    'trades_beta': ('FloatParser', 6.0, "Weight of TRADES' KL term for --defense=trades.", 0.0,
                    None),
    'stepll_random_step': (
        'FloatParser', 0.0, 'Random step before the single step of --defense=stepll / ensemble, '
        'as a fraction of --train_eps in [0, 1) (Tramer et al.: 0.5).', 0.0, None),
    'ensemble_models': ('ListParser', [], 'Static models (.keras files or SavedModel dirs) for '
                        '--defense=ensemble.', None, None),
    'ensemble_attack': ('EnumParser', 'stepll',
                        '<stepll|fgsm>: Single-step attack of --defense=ensemble.', None,
                        ['stepll', 'fgsm']),
}


def test_generated_flags_are_the_hand_written_ones():
  values = flags.FlagValues()
  defense_flags.define_flags(values)
  assert set(values) == set(HAND_WRITTEN)
  for name, (parser, default, help_text, lower, enum) in HAND_WRITTEN.items():
    flag = values[name]
    assert type(flag.parser).__name__ == parser, name
    assert (flag.default, flag.help) == (default, help_text), name
    assert getattr(flag.parser, 'lower_bound', None) == lower, name
    assert getattr(flag.parser, 'enum_values', None) == enum, name
  with pytest.raises(flags.IllegalFlagValueError):
    values(['prog', '--trades_beta=-1'])


def test_hparams_from_flags_takes_the_chosen_defenses_only():
  values = flags.FlagValues()
  defense_flags.define_flags(values)
  values(['prog', '--stepll_random_step=0.5', '--ensemble_models=a.keras,b', '--alp_weight=2'])
  assert defense_flags.hparams_from_flags('ensemble', values) == {
      'stepll_random_step': 0.5, 'ensemble_models': ['a.keras', 'b'], 'ensemble_attack': 'stepll'}
  assert defense_flags.hparams_from_flags('alp', values) == {'alp_weight': 2.0}
  assert defense_flags.hparams_from_flags('madry', values) == {}


def test_path_hyperparameters_are_path_flags():
  assert defense_flags.path_flags() == ('ensemble_models',)
  assert 'ensemble_models' in common_flags.PATH_FLAGS


@pytest.fixture
def main_flags(monkeypatch):
  if 'overfit_guard' not in flags.FLAGS:  # trainers.main's flags, once per process
    main.define_flags()
  monkeypatch.chdir(ROOT)  # nested --flagfile paths are relative to the working directory
  yield flags.FLAGS
  flags.FLAGS.unparse_flags()


@pytest.mark.parametrize('aad', [False, True], ids=['plain', 'aad'])
@pytest.mark.parametrize('name', ['stepll', 'ensemble', 'trades'])
def test_flagfile_parses(name, aad, main_flags, tmp_path):
  static = str(tmp_path / 'static.keras')
  tiny_classifier(shape=(28, 28, 1), classes=10).save(static)
  cfg = f'mnist_{name}_aad' if aad else f'mnist_{name}'
  main_flags.unparse_flags()
  main_flags(['main', f'--flagfile=flags/{cfg}.cfg', f'--model_dir={tmp_path / "run"}'] +
             ([f'--ensemble_models={static}'] if name == 'ensemble' else []))
  config = train_flags.config_from_flags()
  assert (config.dataset, config.defense.defense, config.defense.aad) == ('mnist', name, aad)
  assert config.defense.attack.eps == pytest.approx(0.3)
  if name == 'trades':
    assert config.defense.hparams.trades_beta == 6.0
  if name == 'ensemble':
    assert config.defense.hparams.ensemble_models == (static,)
  rng = np.random.default_rng(0)
  arrays = data_lib.Arrays(rng.uniform(size=(20, 28, 28, 1)).astype(np.float32),
                           np.arange(20) % 10, rng.uniform(size=(20, 28, 28, 1)).astype(np.float32),
                           np.arange(20) % 10)
  guard = main.overfit_guard(config, arrays)
  if name == 'trades':
    assert guard is None
  else:
    assert isinstance(guard, overfitting.OverfitGuard)
    assert (guard.mode, guard.every_steps) == ('warn', 200)


def test_ensemble_flag_mismatch_is_a_usage_error(main_flags, tmp_path):
  wrong = str(tmp_path / 'wrong.keras')
  tiny_classifier().save(wrong)
  main_flags.unparse_flags()
  main_flags(['main', '--flagfile=flags/mnist_ensemble.cfg', f'--model_dir={tmp_path / "run"}',
              f'--ensemble_models={wrong}'])
  with pytest.raises(app.UsageError, match=r'takes images of shape \(8, 8, 1\)'):
    train_flags.config_from_flags()
