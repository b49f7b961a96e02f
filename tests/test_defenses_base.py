"""Tests for aad_tf.defenses.base: the configs, hyperparameter declarations, the registry, and
config.json in the layout of today and of runs written before each defense owned its
hyperparameters."""

import dataclasses
import json

import pytest

from aad_tf import defenses
from aad_tf import training


@pytest.mark.parametrize('kwargs, match', [
    (dict(defense='trades_typo'), 'defense must be one of'),
    (dict(defense='none', aad=True), 'aad needs adversarial examples'),
    (dict(alpha=-1.0), 'alpha'),
    (dict(kappa='median'), 'kappa'),
    (dict(classification_loss='hinge'), 'classification_loss'),
])
def test_bad_config_fails_early(kwargs, match):
  with pytest.raises(ValueError, match=match):
    defenses.DefenseConfig(**kwargs)


def test_attack_config_validation():
  with pytest.raises(ValueError, match='eps'):
    defenses.AttackConfig(eps=3.0)


@pytest.mark.parametrize('kwargs, match', [
    (dict(gradcam_normalize='l2'), 'normalize'),
    (dict(attention_mode='eval'), 'attention_mode'),
])
def test_bad_aad_settings_fail_early(kwargs, match):
  with pytest.raises(ValueError, match=match):
    defenses.DefenseConfig(aad=True, **kwargs)


# ---------------------------------------------------------------------------------------------
# Hyperparameters and the registry.

def test_registry_holds_every_family():
  assert sorted(defenses.BASE_DEFENSES) == ['alp', 'ensemble', 'madry', 'none', 'stepll',
                                            'trades']
  assert not defenses.get_defense('none').adversarial
  for name in ('madry', 'alp', 'stepll', 'ensemble', 'trades'):
    assert defenses.get_defense(name).adversarial
  with pytest.raises(ValueError, match='defense must be one of'):
    defenses.get_defense('typo')


def test_metric_names_come_from_the_registry():
  assert defenses.metric_names() == ('loss', 'class_loss', 'pair_loss', 'kl_loss', 'rect_loss',
                                     'pres_loss')


@pytest.mark.parametrize('name, hparams', [
    ('madry', {}), ('none', {}), ('alp', {'alp_weight': 0.5}), ('trades', {'trades_beta': 6.0}),
    ('stepll', {'stepll_random_step': 0.0}),
])
def test_each_defense_declares_its_hyperparameters_with_defaults(name, hparams):
  assert dataclasses.asdict(defenses.DefenseConfig(defense=name).hparams) == hparams


@pytest.mark.parametrize('name, hparams, match', [
    ('trades', {'trades_beta': -1.0}, 'trades_beta must be >= 0'),
    ('alp', {'alp_weight': -0.1}, 'alp_weight'),
    ('stepll', {'stepll_random_step': 1.0}, r'stepll_random_step is a fraction of eps in \[0, 1\)'),
    ('madry', {'alp_weight': 0.5}, "'madry' has no hyperparameter alp_weight"),
    ('trades', {'trades_bet': 1.0}, 'its hyperparameters: trades_beta'),
])
def test_bad_hyperparameters_fail_early(name, hparams, match):
  with pytest.raises(ValueError, match=match):
    defenses.DefenseConfig(defense=name, hparams=hparams)


def test_hparams_follow_a_change_of_defense():
  trades = defenses.DefenseConfig(defense='trades', hparams={'trades_beta': 2.0})
  assert trades.hparams.trades_beta == 2.0
  madry = dataclasses.replace(trades, defense='madry')
  assert dataclasses.asdict(madry.hparams) == {}
  # A hyperparameter both defenses declare (one declaration) is kept.
  ensemble = defenses.DefenseConfig(defense='ensemble', hparams={
      'stepll_random_step': 0.5, 'ensemble_models': ['a.keras']})
  stepll = dataclasses.replace(ensemble, defense='stepll')
  assert dataclasses.asdict(stepll.hparams) == {'stepll_random_step': 0.5}


def test_map_paths_changes_path_hyperparameters_only():
  config = defenses.DefenseConfig(defense='ensemble', hparams={
      'ensemble_models': ['a.keras', 'b'], 'stepll_random_step': 0.25})
  mapped = config.map_paths(lambda p: '/abs/' + p)
  assert mapped.hparams.ensemble_models == ('/abs/a.keras', '/abs/b')
  assert mapped.hparams.stepll_random_step == 0.25
  madry = defenses.DefenseConfig()
  assert madry.map_paths(lambda p: '/abs/' + p) is madry


def test_register_refuses_clashes():
  with pytest.raises(ValueError, match='already registered'):
    defenses.register_defense('madry', defenses.get_defense('madry'))

  class Clash(defenses.BaseDefense):
    metric_names = ('rect_loss',)

    def loss(self, y, clean_logits, adv_logits, config):
      raise NotImplementedError

  with pytest.raises(ValueError, match='metric_names'):
    defenses.register_defense('clash_test', Clash())

  @dataclasses.dataclass(frozen=True)
  class OtherTrades(defenses.Hyperparameters):
    trades_beta: float = defenses.hyperparameter(1.0, 'Another declaration.')

  class Redeclares(Clash):
    metric_names = ('class_loss',)
    hyperparameters = OtherTrades

  with pytest.raises(ValueError, match="'trades_beta' is declared differently"):
    defenses.register_defense('clash_test', Redeclares())
  assert 'clash_test' not in defenses.BASE_DEFENSES


# ---------------------------------------------------------------------------------------------
# config.json: today's layout and the flat one of older runs.

# The "defense" of a config.json written before issue 16 (flat hyperparameters of every family).
OLD_DEFENSE = {
    'defense': 'trades', 'aad': True, 'alpha': 0.01, 'beta': 0.02, 'kappa': 'mean',
    'classification_loss': 'ce', 'alp_weight': 0.5,
    'attack': {'eps': 0.3, 'step_size': 0.01, 'num_steps': 40, 'random_init': True,
               'warmup_steps': 0},
    'trades_beta': 2.0, 'stepll_random_step': 0.0, 'ensemble_models': [],
    'ensemble_attack': 'stepll', 'gradcam_normalize': 'none', 'attention_mode': 'inference'}


def test_old_flat_config_json_loads_into_the_defenses_hyperparameters():
  config = defenses.DefenseConfig.from_json(OLD_DEFENSE)
  assert config == defenses.DefenseConfig(
      defense='trades', aad=True, beta=0.02, hparams={'trades_beta': 2.0})
  ensemble = defenses.DefenseConfig.from_json(
      {**OLD_DEFENSE, 'defense': 'ensemble', 'aad': False, 'ensemble_models': ['s.keras'],
       'stepll_random_step': 0.5})
  assert dataclasses.asdict(ensemble.hparams) == {
      'stepll_random_step': 0.5, 'ensemble_models': ('s.keras',), 'ensemble_attack': 'stepll'}


def test_new_config_json_round_trips():
  config = defenses.DefenseConfig(defense='alp', aad=True, hparams={'alp_weight': 0.25},
                                  attack=defenses.AttackConfig(eps=0.1, num_steps=3))
  payload = json.loads(json.dumps(dataclasses.asdict(config)))
  assert payload['hparams'] == {'alp_weight': 0.25} and 'alp_weight' not in payload
  assert defenses.DefenseConfig.from_json(payload) == config


def train_config(tmp_path, defense):
  return training.TrainConfig(model_dir=str(tmp_path), train_steps=2, defense=defense)


def test_resume_compares_an_old_config_json_field_by_field(tmp_path):
  old = {**train_config(tmp_path, defenses.DefenseConfig()).to_json(), 'defense': OLD_DEFENSE}
  old = json.loads(json.dumps(old))
  loaded = training.config_from_json(old)
  assert loaded.defense.hparams.trades_beta == 2.0
  same = train_config(tmp_path, defenses.DefenseConfig.from_json(OLD_DEFENSE))
  assert training.config_differences(old, same) == {}
  changed = train_config(tmp_path, dataclasses.replace(
      same.defense, hparams={'trades_beta': 3.0}))
  assert training.config_differences(old, changed) == {
      'defense.hparams.trades_beta': (2.0, 3.0)}
  new = json.loads(json.dumps(changed.to_json()))
  assert training.config_differences(new, changed) == {}
  assert training.config_differences(new, same) == {'defense.hparams.trades_beta': (3.0, 2.0)}


def test_an_old_run_directory_loads_and_resumes(tmp_path, monkeypatch):
  old = {**train_config(tmp_path, defenses.DefenseConfig()).to_json(), 'defense': OLD_DEFENSE}
  (tmp_path / 'config.json').write_text(json.dumps(old))
  # check_resume compares only when the run has checkpoints.
  monkeypatch.setattr(training.checkpointing, 'checkpoints_newest_first', lambda d: ['ckpt-1'])
  same = train_config(tmp_path, defenses.DefenseConfig.from_json(OLD_DEFENSE))
  assert training.load_config(str(tmp_path)) == same
  assert training.check_resume(same) == {}
  changed = train_config(tmp_path, dataclasses.replace(same.defense, hparams={'trades_beta': 3.0}))
  with pytest.raises(training.ConfigChangeError, match=r'defense\.hparams\.trades_beta'):
    training.check_resume(changed)
