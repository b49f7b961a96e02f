"""Tests for aad_tf.analysis.geometry: boxes, grid coverage, IoU and attention areas."""

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import analysis


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
