"""trainers.main end to end on a few steps of real MNIST, and bad flags failing fast."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
  return subprocess.run([sys.executable, '-m', 'trainers.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_main_trains_exports_and_evaluates(tmp_path, shared_data_dir):
  model_dir = tmp_path / 'run'
  args = ['--flagfile=flags/mnist_madry_aad.cfg', f'--data_dir={shared_data_dir}',
          f'--model_dir={model_dir}', '--train_steps=4', '--batch_size=20',
          '--train_num_steps=2', '--eval_examples=40', '--eval_attacks=clean,fgsm,pgd5',
          '--checkpoint_every=2', '--summary_every=2', '--summary_images=2']
  result = run_main(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  for path in ('flags.txt', 'config.json', 'eval.json', 'export/saved_model/saved_model.pb',
               'export/model.keras', 'checkpoints/checkpoint'):
    assert (model_dir / path).exists(), path
  assert '--aad' in (model_dir / 'flags.txt').read_text()
  card = json.loads((model_dir / 'export' / 'model_info.json').read_text())
  assert card['autoattack_acc'] == 'not evaluated' and card['training']['aad']
  assert card['closing_evaluation']['num_examples'] == 40  # written after eval.json
  assert (model_dir / 'export' / 'MODEL_CARD.md').exists()
  config = json.loads((model_dir / 'config.json').read_text())
  assert config['defense']['aad'] and config['defense']['defense'] == 'madry'
  report = json.loads((model_dir / 'eval.json').read_text())
  assert report['num_examples'] == 40
  assert set(report['accuracy']) == {'clean', 'fgsm', 'pgd5', 'worst_case'}
  assert report['accuracy']['worst_case'] <= min(report['accuracy'].values()) + 1e-9
  assert report['train']['final_step'] == 4 and report['train']['wall_time_s'] > 0
  table = result.stdout.lower()  # the Markdown table
  assert 'pgd5' in table and 'worst' in table and '|---|' in table
  assert sorted(os.listdir(model_dir / 'checkpoints')) == [
      'checkpoint', 'ckpt-2.data-00000-of-00001', 'ckpt-2.index',
      'ckpt-4.data-00000-of-00001', 'ckpt-4.index']

  # Re-running the finished run resumes at step 4 and trains nothing more.
  again = run_main(*args, '--noexport')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Run already complete (step 4 of 4)' in again.stderr


@pytest.mark.parametrize('flag, message', [
    ('--defense=magic', 'defense'),
    ('--train_eps=1.5', 'train_eps'),
    ('--kappa=abc', 'kappa'),
    ('--eval_attacks=clean,pgd', 'pgd'),
    ('--batch_size=0', 'batch_size'),
    ('--defense=none', 'aad needs adversarial examples'),
])
def test_bad_flags_fail_before_any_work(flag, message, tmp_path):
  started = time.time()
  result = run_main('--flagfile=flags/mnist_madry_aad.cfg', f'--model_dir={tmp_path / "r"}',
                    '--data_dir=/nonexistent', flag, timeout=120)
  assert result.returncode != 0
  assert message in result.stderr
  assert 'DataNotFoundError' not in result.stderr  # failed before looking for data
  assert not (tmp_path / 'r' / 'checkpoints').exists()
  assert time.time() - started < 60


def test_missing_data_is_a_clear_immediate_error(tmp_path):
  result = run_main('--flagfile=flags/mnist_madry.cfg', f'--model_dir={tmp_path / "r"}',
                    f'--data_dir={tmp_path}', timeout=120)
  assert result.returncode != 0
  assert 'mnist.npz' in result.stderr and '--data_dir' in result.stderr
