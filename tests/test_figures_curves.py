"""Tests for aad_tf.figures.curves: accuracy files of runs, robustness and sensitivity curves."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from aad_tf import figures


def read_png(path_or_bytes):
  data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, 'rb').read()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  image = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
  assert image.std() > 10, 'the figure is blank'
  return image


def test_read_accuracy_layouts(tmp_path):
  single = tmp_path / 'eval.json'
  single.write_text(json.dumps({'eps': 0.3, 'accuracy': {'clean': 0.99, 'pgd20': 0.9}}))
  columns = tmp_path / 'columns.json'
  columns.write_text(json.dumps({'eps': [0.2, 0.1], 'accuracy': {'pgd20': [0.95, 0.97]}}))
  records = tmp_path / 'records.json'
  records.write_text(json.dumps({'results': [{'eps': 0.1, 'accuracy': {'fgsm': 0.8}},
                                             {'eps': 0.05, 'accuracy': {'fgsm': 0.9}}]}))
  assert figures.read_accuracy(str(single)) == {'clean': [(0.3, 0.99)], 'pgd20': [(0.3, 0.9)]}
  assert figures.read_accuracy(str(columns)) == {'pgd20': [(0.1, 0.97), (0.2, 0.95)]}
  assert figures.read_accuracy(str(records)) == {'fgsm': [(0.05, 0.9), (0.1, 0.8)]}
  assert figures.merge_accuracy([str(single), str(columns)])['pgd20'] == [
      (0.1, 0.97), (0.2, 0.95), (0.3, 0.9)]
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps({'eps': [0.1, 0.2], 'accuracy': {'pgd20': [0.9]}}))
  with pytest.raises(ValueError, match='as long as'):
    figures.read_accuracy(str(bad))
  bad.write_text(json.dumps({'accuracy': {'pgd20': 0.9}}))
  with pytest.raises(ValueError, match='"eps" and "accuracy"'):
    figures.read_accuracy(str(bad))


def test_curve_figures_are_png_images(tmp_path):
  curves = {'madry': {'clean': [(0.3, 0.99)], 'pgd20': [(0.1, 0.97), (0.3, 0.9)]},
            'aad': {'clean': [(0.3, 0.98)], 'pgd20': [(0.1, 0.98), (0.3, 0.93)],
                    'fgsm': [(0.3, 0.95)]}}
  read_png(figures.to_png(figures.robustness_figure(curves)))
  points = [figures.SweepPoint(f'r{i}', a, b, {'clean': 0.9 + i / 100, 'pgd20': 0.5 + i / 50})
            for i, (a, b) in enumerate([(0, 0), (0.001, 0.01), (0.01, 0.01), (0.1, 0.01),
                                        (0.01, 0.001), (0.01, 0.1)])]
  path = figures.save_png(figures.sensitivity_figure(points), str(tmp_path / 's.png'))
  read_png(path)
  with pytest.raises(ValueError, match='only clean'):
    figures.robustness_figure({'m': {'clean': [(0.3, 0.9)]}})


def test_sweep_point_reads_config_and_eval(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps({'defense': {'aad': True, 'alpha': 0.1,
                                                           'beta': 0.01}}))
  (run / 'eval.json').write_text(json.dumps({'eps': 0.3, 'accuracy': {'clean': 0.9}}))
  assert figures.sweep_point(str(run)) == figures.SweepPoint('run', 0.1, 0.01, {'clean': 0.9})
  (run / 'config.json').write_text(json.dumps({'defense': {'aad': False, 'alpha': 0.1}}))
  assert figures.sweep_point(str(run)).alpha == 0.0
  with pytest.raises(ValueError, match='not found'):
    figures.sweep_point(str(tmp_path))
