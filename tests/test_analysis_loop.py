"""Tests for aad_tf.analysis.loop (and its report): the Sec. 3 analysis on boxed MNIST."""

import keras
import numpy as np
import pytest

from aad_tf import analysis
from aad_tf import data as data_lib
from aad_tf.data import boxed_mnist
from aad_tf import models


def test_config_checks():
  with pytest.raises(ValueError, match='kappa_mode'):
    analysis.AnalysisConfig(eps=0.1, kappa_mode='median')
  with pytest.raises(ValueError, match='exceeds'):
    analysis.AnalysisConfig(eps=0.1, grid=4, cells=(5, 20))
  with pytest.raises(ValueError, match='eps'):
    analysis.AnalysisConfig(eps=2.0)


SMALL = boxed_mnist.CanvasConfig(canvas_size=32, min_digit_size=12, max_digit_size=20,
                                  min_fragments=2, max_fragments=3, min_fragment_size=5,
                                  max_fragment_size=8, noise=0.0)


@pytest.fixture(scope='module')
def mnist(shared_data_dir):
  return data_lib.load_arrays('mnist', data_dir=str(shared_data_dir))


def _small_model(seed, shape=(32, 32, 1)):
  keras.utils.set_random_seed(seed)
  return models.get_model('lenet', input_shape=shape, num_classes=10)


def test_analyze_tables_and_comparison(mnist):
  lime = pytest.importorskip('lime')
  del lime
  boxed = boxed_mnist.build(mnist, num_train=2, num_test=60, seed=0, config=SMALL)
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
