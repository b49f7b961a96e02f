"""Tests for the trainers.evaluate binary on a run and on a SavedModel, and its flag errors."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from aad_tf import export as export_lib
from aad_tf import files
from aad_tf import models
from aad_tf import training


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_evaluate(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
  return subprocess.run([sys.executable, '-m', 'trainers.evaluate', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, shared_data_dir):
  """A trainers.main-style run directory holding an (untrained) LeNet."""
  model_dir = tmp_path_factory.mktemp('run')
  config = training.TrainConfig(model_dir=str(model_dir), dataset='mnist', model='lenet',
                                data_dir=str(shared_data_dir), seed=3, eval_eps=0.2)
  files.write_json(str(model_dir / 'config.json'), config.to_json())
  # Not read: config.json holds eval_eps (flags.txt is a replay file, not a settings store).
  (model_dir / 'flags.txt').write_text('--dataset=mnist\n--eval_eps=0.25\n--aad\n')
  classifier = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  os.makedirs(model_dir / 'export')
  export_lib.export_all(classifier, models.get_spec('lenet').gradcam_layer, str(model_dir))
  return model_dir


def test_evaluate_binary_on_a_run(run_dir, shared_data_dir):
  result = run_evaluate(
      f'--model_dir={run_dir}', f'--data_dir={shared_data_dir}', '--eval_examples=12',
      '--batch_size=5', '--attacks=clean,fgsm,pgd_a3,apgd_ce,square', '--a3_num_steps=2',
      '--apgd_num_steps=3', '--square_queries=5', '--diagnostic_examples=6', '--sweep_steps=2',
      '--curve_steps=2')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((run_dir / 'robustness.json').read_text())
  assert report['dataset'] == 'mnist' and report['model'] == 'lenet'
  assert report['eps'] == 0.2  # the run's eval_eps, from its config.json
  assert report['seed'] == 3  # the run's seed
  assert report['num_examples'] == 12 and report['first_example'] == 0
  assert set(report['accuracy']) == {'clean', 'fgsm', 'pgd_a3', 'apgd_ce', 'square',
                                     'worst_case'}
  assert report['attacks']['pgd_a3']['num_steps'] == 2
  assert {d['name'] for d in report['diagnostics']} == {
      'gradient_free_beats_gradient', 'single_step_beats_iterative', 'eps_sweep_not_zero',
      'pgd_loss_not_increasing', 'zero_gradients'}
  assert report['versions']['tensorflow'] == tf.__version__
  assert report['wall_time_s'] > 0 and report['source'].endswith('model.keras')
  markdown = (run_dir / 'robustness.md').read_text()
  assert '| | clean | fgsm |' in markdown and 'Gradient-masking diagnostics' in markdown
  assert 'Diagnostics fired:' in result.stdout


def test_evaluate_binary_on_a_run_whose_config_json_predates_eval_eps(run_dir, tmp_path):
  old = tmp_path / 'old_run'
  old.mkdir()
  saved = json.loads((run_dir / 'config.json').read_text())
  del saved['eval_eps'], saved['gradcam_layer']
  (old / 'config.json').write_text(json.dumps(saved))
  (old / 'flags.txt').write_text('--dataset=mnist\n--eval_eps=0.15\n')
  os.symlink(run_dir / 'export', old / 'export')
  result = run_evaluate(f'--model_dir={old}', '--eval_examples=5', '--batch_size=5',
                        '--attacks=clean', '--nodiagnostics')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((old / 'robustness.json').read_text())['eps'] == 0.15  # from flags.txt
  assert result.stderr.count('To migrate, add "eval_eps": 0.15 to that config.json') == 1


@pytest.mark.slow  # the SavedModel path is covered in-process by test_saved_model_target
def test_evaluate_binary_on_a_saved_model(run_dir, shared_data_dir, tmp_path):
  result = run_evaluate(
      f'--saved_model={run_dir / "export" / "saved_model"}', '--dataset=mnist',
      f'--data_dir={shared_data_dir}', '--eval_examples=6', '--attacks=clean,fgsm,adaptive',
      '--nodiagnostics', f'--output_dir={tmp_path}', '--eps=0.1')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / 'robustness.json').read_text())
  assert report['eps'] == 0.1 and set(report['accuracy']) == {'clean', 'fgsm', 'worst_case'}
  assert 'adaptive' in report['skipped'] and report['diagnostics'] == []


def test_evaluate_binary_bad_flags_fail_fast(run_dir):
  # The eps check shares this code path (see test_bad_names_and_eps_are_clear_errors).
  result = run_evaluate(f'--model_dir={run_dir}', '--data_dir=/nonexistent',
                        '--attacks=clean,pgd', timeout=300)
  assert result.returncode != 0
  assert "Unknown attack 'pgd'" in result.stderr and 'UsageError' not in result.stderr
  assert 'DataNotFoundError' not in result.stderr  # failed before looking for data
  result = run_evaluate(f'--model_dir={run_dir}', '--data_dir=/nonexistent', '--batch_size=5',
                        '--eval_offset=7', timeout=300)
  assert result.returncode != 0 and 'must be a multiple of --batch_size=5' in result.stderr
