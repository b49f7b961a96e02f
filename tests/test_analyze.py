"""Tests for the trainers.analyze binary: end to end on boxed MNIST, and a run without boxes."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf import analysis
from aad_tf import data as data_lib
from aad_tf import files
from aad_tf import models
from aad_tf import training


REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def mnist(shared_data_dir):
  return data_lib.load_arrays('mnist', data_dir=str(shared_data_dir))


def _small_model(seed, shape=(32, 32, 1)):
  keras.utils.set_random_seed(seed)
  return models.get_model('lenet', input_shape=shape, num_classes=10)


def _two_runs(tmp_path):
  """Two boxed_mnist run directories as trainers.main leaves them: 'raw' restored from its
  checkpoint (step 7), 'other' with only its export."""
  shape = data_lib.get_info('boxed_mnist').image_shape
  run = tmp_path / 'raw'
  (run / 'checkpoints').mkdir(parents=True)
  config = training.TrainConfig(model_dir=str(run), dataset='boxed_mnist', model='lenet')
  files.write_json(str(run / 'config.json'), config.to_json())
  checkpoint = tf.train.Checkpoint(model=_small_model(0, shape))
  tf.train.CheckpointManager(checkpoint, str(run / 'checkpoints'), 1).save(checkpoint_number=7)
  other = tmp_path / 'other'
  (other / 'export').mkdir(parents=True)
  (other / 'config.json').write_text((run / 'config.json').read_text())
  _small_model(1, shape).save(str(other / 'export' / 'model.keras'))
  return run, other


def test_tool_end_to_end(tmp_path, shared_data_dir):
  pytest.importorskip('lime')
  run, other = _two_runs(tmp_path)
  out = tmp_path / 'out'
  command = [sys.executable, '-m', 'trainers.analyze', f'--model_dir={run}',
             f'--compare_model_dirs={other}', f'--data_dir={shared_data_dir}',
             '--num_examples=40', '--batch_size=20', '--lime_examples=2', '--lime_samples=20',
             '--attack_rounds=2', '--figure_examples=1', f'--output_dir={out}']
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', 'CUDA_VISIBLE_DEVICES': ''}
  proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / 'analysis.json').read_text())
  for key in ('summary', 'table1', 'table2', 'table3', 'table4', 'table5'):
    assert report[key] is not None, key
    assert report['models']['other'][key] is not None, key
  assert report['model'] == 'raw' and report['summary']['num_examples'] == 40
  assert report['settings']['eps'] == pytest.approx(0.1)
  assert set(report['table1']['iou_by_kappa']) == set(analysis.KAPPA_MODES)
  markdown = (out / 'analysis.md').read_text()
  assert '**Table 5.**' in markdown and 'Across models' in markdown
  records = np.load(out / 'records.npz')
  assert records['raw/correct'].shape == (40,)
  figures = {p.name for p in out.glob('*.png')}
  if report['summary']['num_att']:
    assert {'fig1_gradcam.png', 'fig2_rounds.png', 'fig_compare.png'} <= figures


def test_tool_on_a_run_without_boxes_says_it_needs_boxed_data(tmp_path):
  run = tmp_path / 'mnist_run'
  run.mkdir()
  config = training.TrainConfig(model_dir=str(run), dataset='mnist', model='lenet')
  files.write_json(str(run / 'config.json'), config.to_json())
  env = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''}
  proc = subprocess.run([sys.executable, '-m', 'trainers.analyze', f'--model_dir={run}'],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert 'trained on mnist, which has no bounding boxes' in lines[0]
  assert 'needs boxed data' in lines[0] and 'boxed_mnist' in lines[0]
  assert not (run / 'analysis').exists()


def test_tool_end_to_end_without_lime(tmp_path, shared_data_dir):
  """trainers.analyze on a checkpointed run and an exported one, LIME off (runs without lime)."""
  run, other = _two_runs(tmp_path)
  command = [sys.executable, '-m', 'trainers.analyze', f'--model_dir={run}',
             f'--compare_model_dirs={other}', f'--data_dir={shared_data_dir}',
             '--num_examples=20', '--batch_size=20', '--lime_features=', '--attack_rounds=2',
             '--figure_examples=1']
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', 'CUDA_VISIBLE_DEVICES': ''}
  proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = run / 'analysis'  # the default --output_dir
  report = json.loads((out / 'analysis.json').read_text())
  assert report['model'] == 'raw' and report['summary']['num_examples'] == 20
  assert set(report['models']) == {'raw', 'other'}
  assert np.load(out / 'records.npz')['raw/correct'].shape == (20,)
  assert proc.stdout.count('Attention data analysis') == 1  # the Markdown, printed once
  assert 'ckpt-7 (step 7)' in proc.stderr and 'other/export/model.keras' in proc.stderr
