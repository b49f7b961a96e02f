"""Tests for aad_tf.analysis.lime_masks: LIME masks from superpixel weights."""

import numpy as np

from aad_tf import analysis


def test_lime_mask_keeps_the_top_segments():
  segments = np.arange(16).reshape(4, 4) // 2  # 8 segments of 2 pixels.
  weights = np.array([0.1, -1.0, 0.5, 0.3, 0.0, 0.9, -0.2, 0.4])
  mask = analysis.lime_mask(segments, weights, 3)
  np.testing.assert_array_equal(np.unique(segments[mask]), [2, 5, 7])
  grid = analysis.segment(np.zeros([12, 12, 1]), 'grid', grid=4)
  assert len(np.unique(grid)) == 16 and np.all(np.bincount(grid.ravel()) == 9)
