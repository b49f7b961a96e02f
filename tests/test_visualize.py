"""Tests for the trainers.visualize binary: every figure of a short run."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import training


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ATTACK = defense_lib.AttackConfig(eps=0.3, step_size=0.1, num_steps=3)


def read_png(path_or_bytes):
  data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, 'rb').read()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  image = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
  assert image.std() > 10, 'the figure is blank'
  return image


def test_visualize_binary_writes_every_figure(tmp_path, shared_data_dir):
  run_a = tmp_path / 'madry'
  config = training.TrainConfig(
      model_dir=str(run_a), data_dir=str(shared_data_dir), batch_size=8, train_steps=2,
      checkpoint_every=1, defense=defense_lib.DefenseConfig(attack=ATTACK))
  training.train(config, data_lib.load_arrays('mnist', data_dir=str(shared_data_dir)))
  run_b = tmp_path / 'madry_aad'
  shutil.copytree(run_a, run_b)
  saved = json.loads((run_b / 'config.json').read_text())
  saved['defense'].update(aad=True, alpha=0.1)
  (run_b / 'config.json').write_text(json.dumps(saved))
  for run, acc in ((run_a, 0.5), (run_b, 0.6)):
    (run / 'eval.json').write_text(json.dumps({'eps': 0.3, 'accuracy': {'clean': 0.9,
                                                                        'pgd20': acc}}))
  out = tmp_path / 'figures'
  result = subprocess.run(
      [sys.executable, '-m', 'trainers.visualize', f'--model_dir={run_a}',
       f'--runs={run_a},{run_b}', f'--output_dir={out}', f'--data_dir={shared_data_dir}',
       '--figures=attention,evolution,compare,robustness,sensitivity', '--num_images=3',
       '--dpi=60'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ('attention', 'evolution', 'compare', 'robustness', 'sensitivity'):
    read_png(str(out / f'{name}.png'))
  # Evolution: step 0 (rebuilt initial weights) and the two kept checkpoints.
  assert read_png(str(out / 'evolution.png')).shape[1] > read_png(str(out / 'attention.png')
                                                                   ).shape[1] // 3
  bad = subprocess.run([sys.executable, '-m', 'trainers.visualize', '--figures=attention'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and 'need --model_dir' in bad.stderr
