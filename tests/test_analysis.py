"""Tests of the attention analysis (aad_tf.analysis), its datasets and the trainers.analyze tool."""

import dataclasses
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
from aad_tf import boxed_digits
from aad_tf import data as data_lib
from aad_tf import imagenet_boxes
from aad_tf import models
from aad_tf import training

REPO = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# IoU and geometry.

def test_iou_identical_is_one_and_disjoint_is_zero():
  rng = np.random.default_rng(0)
  a = rng.random([5, 8, 8]) > 0.5
  a[:, 0, 0] = True  # Never empty.
  np.testing.assert_array_equal(analysis.iou(a, a), np.ones(5))
  np.testing.assert_array_equal(analysis.iou(a, ~a), np.zeros(5))


def test_iou_matches_a_count_of_cells():
  rng = np.random.default_rng(1)
  a, b = rng.random([2, 4, 6, 6]) > 0.6
  expected = [np.sum(a[i] & b[i]) / np.sum(a[i] | b[i]) for i in range(4)]
  np.testing.assert_allclose(analysis.iou(a, b), expected)
  assert np.isnan(analysis.iou(np.zeros([1, 3, 3]), np.zeros([1, 3, 3])))[0]
  with pytest.raises(ValueError):
    analysis.iou(np.zeros([1, 3, 3]), np.zeros([1, 3, 4]))


def _coverage_by_sampling(boxes, image_size, grid, samples=240):
  """Reference: the share of a fine lattice of points of each cell inside some box."""
  height, width = image_size
  ys = (np.arange(samples) + 0.5) * height / samples
  xs = (np.arange(samples) + 0.5) * width / samples
  inside = np.zeros([samples, samples], bool)
  for ymin, xmin, ymax, xmax in boxes:
    inside |= ((ymin <= ys) & (ys < ymax))[:, None] & ((xmin <= xs) & (xs < xmax))[None, :]
  return inside.reshape(grid[0], samples // grid[0], grid[1], samples // grid[1]).mean(axis=(1, 3))


def test_box_coverage_is_exact():
  # A box on cell edges of a 4x4 grid over 32x32 pixels covers whole cells.
  cov = analysis.box_coverage([[8, 0, 24, 16]], (32, 32), (4, 4))
  expected = np.zeros([4, 4])
  expected[1:3, 0:2] = 1.0
  np.testing.assert_allclose(cov, expected)
  # Half a cell.
  cov = analysis.box_coverage([[0, 0, 4, 8]], (32, 32), (4, 4))
  assert cov[0, 0] == pytest.approx(0.5) and cov.sum() == pytest.approx(0.5)
  # Overlapping boxes on a grid that does not divide the image: the union, counted once.
  boxes = np.array([[3.5, 2.0, 20.25, 17.0], [10.0, 9.0, 28.0, 30.0], [0.0, 25.0, 6.0, 33.0]])
  cov = analysis.box_coverage(boxes, (30, 30), (8, 8))
  np.testing.assert_allclose(cov, _coverage_by_sampling(boxes, (30, 30), (8, 8)), atol=0.02)
  assert np.all((0.0 <= cov) & (cov <= 1.0 + 1e-12))


def test_ground_truth_cells_half_covered_and_never_empty():
  cov = np.zeros([2, 4, 4])
  cov[0, 1, 1], cov[0, 2, 2], cov[0, 3, 3] = 0.5, 0.49, 1.0
  cov[1, 0, 3] = 0.2  # No cell half covered: the most covered one.
  cells = analysis.ground_truth_cells(cov)
  assert cells[0].sum() == 2 and cells[0, 1, 1] and cells[0, 3, 3]
  assert cells[1].sum() == 1 and cells[1, 0, 3]


def test_box_pixel_mask_is_pixel_exact():
  mask = analysis.box_pixel_mask([[2, 3, 5, 7], [4, 6, 6, 8]], (8, 10))
  expected = np.zeros([8, 10], bool)
  expected[2:5, 3:7] = True
  expected[4:6, 6:8] = True
  np.testing.assert_array_equal(mask, expected)


# ---------------------------------------------------------------------------------------------
# Attention areas.

def test_equal_area_kappa_gives_equal_areas_and_is_a_threshold():
  rng = np.random.default_rng(2)
  cam = rng.random([6, 8, 8]).astype(np.float32)
  gt = rng.random([6, 8, 8]) > rng.random([6, 1, 1])
  gt[:, 4, 4] = True
  att = analysis.attention(cam, kappa_mode='equal_area', gt_cells=gt)
  np.testing.assert_array_equal(att.sum(axis=(1, 2)), gt.sum(axis=(1, 2)))
  for i in range(6):  # The image-specific kappa: every kept cell outranks every dropped one.
    if att[i].all():
      continue
    assert cam[i][att[i]].min() > cam[i][~att[i]].max()


@pytest.mark.parametrize('k', [1, 5, 10, 20, 30, 64])
def test_top_cells_picks_exactly_k(k):
  rng = np.random.default_rng(k)
  cam = rng.random([4, 8, 8]).astype(np.float32)
  cam[0] = 1.0  # All tied: still exactly k (by position).
  cam[1, :2] = 0.0  # Some ties.
  cells = analysis.top_cells(cam, k)
  np.testing.assert_array_equal(cells.sum(axis=(1, 2)), [k] * 4)
  for i in (2, 3):
    kth = np.sort(cam[i].ravel())[::-1][k - 1]
    np.testing.assert_array_equal(cells[i], cam[i] >= kth)


def test_mean_and_fixed_kappa():
  rng = np.random.default_rng(3)
  cam = rng.random([3, 5, 5]).astype(np.float32) * 7.0
  np.testing.assert_array_equal(analysis.attention(cam, kappa_mode='mean'),
                                cam >= cam.mean(axis=(1, 2), keepdims=True))
  np.testing.assert_array_equal(analysis.attention(cam, kappa_mode='fixed', kappa=0.6),
                                cam / cam.max(axis=(1, 2), keepdims=True) >= 0.6)
  with pytest.raises(ValueError, match='gt_cells'):
    analysis.attention(cam, kappa_mode='equal_area')


def test_pool_cam_averages_cells():
  rng = np.random.default_rng(4)
  cam = rng.random([2, 32, 32]).astype(np.float32)
  pooled = analysis.pool_cam(tf.constant(cam), 8).numpy()
  np.testing.assert_allclose(pooled, cam.reshape(2, 8, 4, 8, 4).mean(axis=(2, 4)), rtol=1e-5)
  assert analysis.pool_cam(tf.constant(cam), None).shape == (2, 32, 32)
  with pytest.raises(ValueError, match='finer'):
    analysis.pool_cam(tf.constant(cam[:, :7, :7]), 8)


def test_lime_mask_keeps_the_top_segments():
  segments = np.arange(16).reshape(4, 4) // 2  # 8 segments of 2 pixels.
  weights = np.array([0.1, -1.0, 0.5, 0.3, 0.0, 0.9, -0.2, 0.4])
  mask = analysis.lime_mask(segments, weights, 3)
  np.testing.assert_array_equal(np.unique(segments[mask]), [2, 5, 7])
  grid = analysis.segment(np.zeros([12, 12, 1]), 'grid', grid=4)
  assert len(np.unique(grid)) == 16 and np.all(np.bincount(grid.ravel()) == 9)


def test_config_checks():
  with pytest.raises(ValueError, match='kappa_mode'):
    analysis.AnalysisConfig(eps=0.1, kappa_mode='median')
  with pytest.raises(ValueError, match='exceeds'):
    analysis.AnalysisConfig(eps=0.1, grid=4, cells=(5, 20))
  with pytest.raises(ValueError, match='eps'):
    analysis.AnalysisConfig(eps=2.0)


# ---------------------------------------------------------------------------------------------
# Datasets with boxes.

SMALL = boxed_digits.CanvasConfig(canvas_size=32, min_digit_size=12, max_digit_size=20,
                                  min_fragments=2, max_fragments=3, min_fragment_size=5,
                                  max_fragment_size=8, noise=0.0)


@pytest.fixture(scope='module')
def mnist(shared_data_dir):
  return data_lib.load_arrays('mnist', data_dir=str(shared_data_dir))


def test_boxed_digits_boxes_are_exact_and_clutter_stays_out(mnist):
  digits = mnist.x_test[:40]
  canvases, boxes = boxed_digits.draw(digits, seed=3, config=SMALL)
  again, boxes_again = boxed_digits.draw(digits, seed=3, config=SMALL)
  np.testing.assert_array_equal(canvases, again)  # Deterministic.
  np.testing.assert_array_equal(boxes, boxes_again)
  plain_config = dataclasses.replace(SMALL, min_fragments=0, max_fragments=0)
  plain, plain_boxes = boxed_digits.draw(digits, seed=3, config=plain_config)
  np.testing.assert_array_equal(boxes, plain_boxes)  # Clutter does not move the digit.
  assert not np.array_equal(canvases, plain)
  for canvas, alone, (ymin, xmin, ymax, xmax) in zip(canvases[..., 0], plain[..., 0], boxes):
    # The box is the tight box of the digit's ink ...
    ink = alone > SMALL.ink_threshold * alone.max()
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == (ymin, xmin, ymax, xmax)
    # ... and clutter never enters it.
    np.testing.assert_array_equal(canvas[ymin:ymax, xmin:xmax], alone[ymin:ymax, xmin:xmax])
  assert canvases.dtype == np.float32 and canvases.min() >= 0 and canvases.max() <= 1


def test_box_dataset_and_registration(mnist):
  boxed = boxed_digits.build(mnist, num_train=20, num_test=12, seed=1, config=SMALL)
  batches = list(boxed_digits.box_dataset(boxed, batch_size=5))
  assert [len(b[0]) for b in batches] == [5, 5, 2]
  x, y, box = (np.concatenate([b[i] for b in batches]) for i in range(3))
  np.testing.assert_array_equal(x, boxed.arrays.x_test)
  np.testing.assert_array_equal(y, mnist.y_test[:12])
  np.testing.assert_array_equal(box, boxed.boxes('test'))
  info = data_lib.get_info('boxed_mnist')
  assert info.image_shape == (boxed_digits.DEFAULT_CONFIG.canvas_size,) * 2 + (1,)
  assert (info.num_train, info.num_test) == (boxed_digits.NUM_TRAIN, boxed_digits.NUM_TEST)


def test_imagenet_annotations(tmp_path):
  (tmp_path / 'val').mkdir()
  (tmp_path / 'val_boxes').mkdir()
  (tmp_path / 'synsets.txt').write_text('n01440764 tench\nn01443537 goldfish\n')
  image = np.zeros([40, 60, 3], np.uint8)
  image[10:20, 30:60] = 255
  (tmp_path / 'val' / 'ILSVRC2012_val_00000001.JPEG').write_bytes(
      tf.io.encode_jpeg(image, quality=100).numpy())
  (tmp_path / 'val_boxes' / 'ILSVRC2012_val_00000001.xml').write_text(
      '<annotation><filename>ILSVRC2012_val_00000001</filename>'
      '<size><width>60</width><height>40</height><depth>3</depth></size>'
      '<object><name>n01443537</name><bndbox><xmin>31</xmin><ymin>11</ymin><xmax>60</xmax>'
      '<ymax>20</ymax></bndbox></object>'
      '<object><name>n01443537</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax>'
      '<ymax>2</ymax></bndbox></object></annotation>')
  (annotation,) = imagenet_boxes.read_annotations(str(tmp_path))
  assert annotation.label == 1 and annotation.size == (40, 60)
  np.testing.assert_array_equal(annotation.boxes, [[10, 30, 20, 60], [0, 0, 2, 4]])
  (x, y, boxes), = list(imagenet_boxes.batches([annotation], image_size=(20, 30), batch_size=4))
  assert x.shape == (1, 20, 30, 3) and y.tolist() == [1]
  np.testing.assert_allclose(boxes[0], [[5, 15, 10, 30], [0, 0, 1, 2]])
  # The box lies on the white rectangle: the mean inside is high, outside it is low.
  mask = analysis.box_pixel_mask(boxes[0][:1], (20, 30))
  assert x[0][mask].mean() > 0.9 and x[0][~mask].mean() < 0.1
  with pytest.raises(FileNotFoundError, match='expected layout'):
    imagenet_boxes.read_annotations(str(tmp_path / 'missing'))


# ---------------------------------------------------------------------------------------------
# End to end.

def _small_model(seed, shape=(32, 32, 1)):
  keras.utils.set_random_seed(seed)
  return models.get_model('lenet', input_shape=shape, num_classes=10)


def test_analyze_tables_and_comparison(mnist):
  lime = pytest.importorskip('lime')
  del lime
  boxed = boxed_digits.build(mnist, num_train=2, num_test=60, seed=0, config=SMALL)
  x, y = boxed.arrays.split('test')
  batches = [(x[i:i + 25], y[i:i + 25], list(boxed.boxes('test')[i:i + 25, None]))
             for i in range(0, 60, 25)]
  config = analysis.AnalysisConfig(eps=0.3, grid=8, lime_examples=3, lime_samples=30,
                                   lime_segmentation='slic', lime_segments=16, batch_size=25)
  result = analysis.analyze([analysis.AnalyzedModel('a', _small_model(0), 'gradcam'),
                             analysis.AnalyzedModel('b', _small_model(1), 'gradcam')],
                            batches, config)
  assert list(result.tables) == ['a', 'b']
  for name, tables in result.tables.items():
    records = result.records[name]
    assert tables['summary']['num_examples'] == 60
    n_att = int(records['correct'].sum())
    t1 = tables['table1']
    assert t1['succeeded']['count'] + t1['failed']['count'] == n_att
    # Recompute Table 1's succeeded IoU from the records independently.
    mask = records['correct'] & records['succeeded']
    values = records['iou_gt/equal_area'][mask]
    values = values[np.isfinite(values)]
    if values.size:
      assert t1['succeeded']['iou']['mean'] == pytest.approx(values.mean())
    assert [r['cells'] for r in tables['table3']['rows']] == [5, 10, 20, 30]
    for row in tables['table3']['rows']:
      for subset in analysis.SUBSETS:
        mean = row[subset]['mean']
        assert mean is None or 0.0 <= mean <= 1.0
    assert [r['features'] for r in tables['table4']['rows']] == [8, 10]
    assert tables['table4']['num_examples'] == min(3, n_att)
  markdown = analysis.to_markdown(result)
  for table in range(1, 6):
    assert f'**Table {table}.**' in markdown
  assert 'Across models' in markdown


def test_tool_end_to_end(tmp_path, shared_data_dir):
  pytest.importorskip('lime')
  shape = data_lib.get_info('boxed_mnist').image_shape
  # A run directory as trainers.main leaves it, restored from its checkpoint ...
  run = tmp_path / 'raw'
  (run / 'checkpoints').mkdir(parents=True)
  config = training.TrainConfig(model_dir=str(run), dataset='boxed_mnist', model='lenet')
  training.write_json(str(run / 'config.json'), config.to_json())
  checkpoint = tf.train.Checkpoint(model=_small_model(0, shape))
  tf.train.CheckpointManager(checkpoint, str(run / 'checkpoints'), 1).save(checkpoint_number=7)
  # ... and one with only its export.
  other = tmp_path / 'other'
  (other / 'export').mkdir(parents=True)
  (other / 'config.json').write_text((run / 'config.json').read_text())
  _small_model(1, shape).save(str(other / 'export' / 'model.keras'))
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
  training.write_json(str(run / 'config.json'), config.to_json())
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
  shape = data_lib.get_info('boxed_mnist').image_shape
  run = tmp_path / 'raw'
  (run / 'checkpoints').mkdir(parents=True)
  config = training.TrainConfig(model_dir=str(run), dataset='boxed_mnist', model='lenet')
  training.write_json(str(run / 'config.json'), config.to_json())
  checkpoint = tf.train.Checkpoint(model=_small_model(0, shape))
  tf.train.CheckpointManager(checkpoint, str(run / 'checkpoints'), 1).save(checkpoint_number=7)
  other = tmp_path / 'other'
  (other / 'export').mkdir(parents=True)
  (other / 'config.json').write_text((run / 'config.json').read_text())
  _small_model(1, shape).save(str(other / 'export' / 'model.keras'))
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
