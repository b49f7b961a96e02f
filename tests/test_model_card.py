"""Tests of aad_tf/model_card.py: model_info.json and MODEL_CARD.md from a run's files."""

import json
import os

import pytest

from aad_tf import defenses
from aad_tf import files
from aad_tf import model_card
from aad_tf import training


def write_run(tmp_path, **changes):
  config = training.TrainConfig(model_dir=str(tmp_path / 'cifar_run'), **changes)
  os.makedirs(config.model_dir)
  files.write_json(os.path.join(config.model_dir, 'config.json'), config.to_json())
  return config.model_dir


def cifar_run(tmp_path):
  attack = defenses.AttackConfig(eps=8 / 255, step_size=2 / 255, num_steps=7)
  return write_run(tmp_path, dataset='cifar10', model='resnet9', batch_size=100,
                   learning_rate=1e-4, epochs=200, augment='pad_crop_flip',
                   defense=defenses.DefenseConfig(defense='madry', aad=True, alpha=0.02,
                                                 beta=0.01, attack=attack))


def test_without_robustness_json_every_robust_number_is_not_evaluated(tmp_path):
  model_dir = cifar_run(tmp_path)
  info = model_card.model_info(model_dir, commit='abc123')
  for key in ('clean_acc', 'autoattack_acc', 'eps', 'robustness', 'worst_case_acc'):
    assert info[key] == 'not evaluated', key
  assert info['closing_evaluation'] is None
  assert (info['dataset'], info['architecture'], info['threat_model']) == ('cifar10', 'resnet9',
                                                                          'Linf')
  assert info['input']['shape'] == [32, 32, 3] and info['commit'] == 'abc123'
  summary = info['training']['summary']
  assert 'Madry' in summary and 'PGD-7 x 0.007843 at eps 8/255' in summary
  assert '+ AAD (alpha 0.02, beta 0.01, kappa mean)' in summary
  assert 'adam lr 0.0001, batch 100, 200 epochs, augmentation pad_crop_flip' in summary
  card = model_card.render(info)
  assert 'AutoAttack accuracy: not evaluated. Clean accuracy: not evaluated.' in card
  assert 'abc123' in card


def test_robustness_json_fills_the_robustbench_fields(tmp_path):
  model_dir = cifar_run(tmp_path)
  files.write_json(os.path.join(model_dir, 'robustness.json'), {
      'eps': 8 / 255, 'num_examples': 500, 'first_example': 0, 'seed': 0,
      'accuracy': {'clean': 0.8123, 'autoattack': 0.40456, 'pgd20': 0.45, 'worst_case': 0.4},
      'attacks': {'autoattack': {'version': 'standard'}}, 'gradient_masking_suspected': False})
  files.write_json(os.path.join(model_dir, 'eval.json'), {
      'eps': 8 / 255, 'num_examples': 200, 'accuracy': {'clean': 0.8, 'pgd20': 0.5}})
  card_path, info_path = model_card.write(model_dir, str(tmp_path / 'export' / '1'),
                                          commit='abc123')
  info = json.loads(open(info_path).read())
  assert (info['clean_acc'], info['autoattack_acc'], info['eps']) == ('81.23', '40.46', '8/255')
  assert info['autoattack_version'] == 'standard' and info['worst_case_acc'] == '40.00'
  assert info['robustness']['num_examples'] == 500
  assert info['closing_evaluation']['accuracy'] == {'clean': 0.8, 'pgd20': 0.5}
  assert info['additional_data'] is False and info['number_forward_passes'] == 1
  card = open(card_path).read()
  for row in ('| clean | 81.23 |', '| AutoAttack (standard) | 40.46 |', '| pgd20 | 45.00 |',
              '| worst_case | 40.00 |'):
    assert row in card
  assert 'not evaluated' not in card
  assert 'eval.json; a few fixed attacks, not a robustness evaluation' in card
  assert sorted(os.listdir(tmp_path / 'export' / '1')) == ['MODEL_CARD.md', 'model_info.json']


def test_robustness_json_without_autoattack_says_so(tmp_path):
  model_dir = write_run(tmp_path)  # MNIST LeNet defaults
  files.write_json(os.path.join(model_dir, 'robustness.json'), {
      'eps': 0.3, 'num_examples': 100, 'accuracy': {'clean': 0.99, 'pgd20': 0.9,
                                                    'worst_case': 0.9}})
  info = model_card.model_info(model_dir, commit=None)
  assert (info['clean_acc'], info['autoattack_acc'], info['eps']) == ('99.00', 'not evaluated',
                                                                      '0.3')
  assert '| AutoAttack | not evaluated |' in model_card.render(info)
  assert info['autoattack_version'] is None


@pytest.mark.parametrize('where', [{'autoattack_version': 'standard-1'},
                                   {'attacks': {'autoattack': {'version': 'standard-1'}}},
                                   {'versions': {'autoattack': 'standard-1'}}])
def test_autoattack_version_is_read_where_robustness_json_keeps_it(tmp_path, where):
  model_dir = write_run(tmp_path)
  files.write_json(os.path.join(model_dir, 'robustness.json'), {
      'eps': 0.3, 'num_examples': 10, 'accuracy': {'clean': 1.0, 'autoattack': 0.5}, **where})
  info = model_card.model_info(model_dir, commit='x')
  assert (info['autoattack_acc'], info['autoattack_version']) == ('50.00', 'standard-1')


@pytest.mark.parametrize('eps, text', [(8 / 255, '8/255'), (16 / 255, '16/255'), (0.3, '0.3'),
                                       (0.2, '0.2'), (0.0, '0'), (None, 'not evaluated')])
def test_eps_is_written_as_robustbench_does(eps, text):
  assert model_card.format_eps(eps) == text


def test_a_directory_without_config_json_is_a_value_error(tmp_path):
  with pytest.raises(ValueError, match='no config.json'):
    model_card.model_info(str(tmp_path))


@pytest.mark.parametrize('recorded, trained', [('bfloat16', 'bfloat16'), ('float32', 'float32'),
                                               (True, 'bfloat16'), (False, 'float32')])
def test_precision_field_says_trained_in_and_exported_float32(tmp_path, recorded, trained):
  """Issue 25: the card names the training precision and the export's (always float32)."""
  model_dir = write_run(tmp_path, mixed_precision='float32')
  path = os.path.join(model_dir, 'config.json')
  with open(path) as f:
    config = json.load(f)
  config['mixed_precision'] = recorded  # as written by this version, or a bool by an older one
  files.write_json(path, config)
  info = model_card.model_info(model_dir, commit='abc123')
  assert info['training']['training_precision'] == trained
  assert info['training']['precision'] == 'float32'
  assert (f'- precision: trained in {trained}; the exported model and its evaluation compute in '
          f'float32') in model_card.render(info)
