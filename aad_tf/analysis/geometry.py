"""Box geometry and attention maps on an analysis grid: coverage, GT cells, IoU, kappa.

The conventions (boxes, grids, coverage) are those of the package docstring (aad_tf/analysis).
"""

import numpy as np
import tensorflow as tf

from aad_tf import gradcam as gradcam_lib


KAPPA_MODES = ('equal_area', 'mean', 'fixed')



def iou(a, b) -> np.ndarray:
  """Intersection over union of binary masks, per example.

  Args:
    a, b: masks of the same shape [B, ...] (bool, or numbers where nonzero means inside).

  Returns:
    float64 [B]: |a & b| / |a | b|, NaN where both masks are empty.
  """
  a, b = np.asarray(a) != 0, np.asarray(b) != 0
  if a.shape != b.shape or a.ndim < 2:
    raise ValueError(f'Masks must have the same shape [B, ...], got {a.shape} and {b.shape}.')
  axes = tuple(range(1, a.ndim))
  inter = np.logical_and(a, b).sum(axis=axes)
  union = np.logical_or(a, b).sum(axis=axes)
  return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def _check_boxes(boxes) -> np.ndarray:
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros([0, 4])
  if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
    raise ValueError(f'Boxes must be (ymin, xmin, ymax, xmax) with min <= max, got {boxes}.')
  return boxes


def box_coverage(boxes, image_size: tuple[int, int], grid_size: tuple[int, int]) -> np.ndarray:
  """The exact fraction of each grid cell covered by the union of the boxes.

  The image [0, H) x [0, W) is cut into grid_size equal cells (of non-integer size if the grid
  does not divide the image). Coordinates are cut at every box and cell edge; each elementary
  rectangle is inside one cell and either inside the union or not, so the sum is exact.

  Args:
    boxes: float [K, 4] (ymin, xmin, ymax, xmax) in pixels; clipped to the image.
    image_size: (H, W).
    grid_size: (h, w).

  Returns:
    float64 [h, w] in [0, 1].
  """
  height, width = (float(v) for v in image_size)
  rows, cols = (int(v) for v in grid_size)
  boxes = _check_boxes(boxes)
  boxes = np.clip(boxes, 0.0, [height, width, height, width])
  y_cells, x_cells = np.linspace(0.0, height, rows + 1), np.linspace(0.0, width, cols + 1)
  ys = np.unique(np.concatenate([y_cells, boxes[:, 0], boxes[:, 2]]))
  xs = np.unique(np.concatenate([x_cells, boxes[:, 1], boxes[:, 3]]))
  yc, xc = (ys[:-1] + ys[1:]) / 2, (xs[:-1] + xs[1:]) / 2  # Centres of the elementary pieces.
  inside = np.zeros([len(yc), len(xc)], bool)
  for ymin, xmin, ymax, xmax in boxes:
    inside |= ((ymin <= yc) & (yc < ymax))[:, None] & ((xmin <= xc) & (xc < xmax))[None, :]
  area = np.diff(ys)[:, None] * np.diff(xs)[None, :] * inside
  row = np.clip(np.searchsorted(y_cells, yc, side='right') - 1, 0, rows - 1)
  col = np.clip(np.searchsorted(x_cells, xc, side='right') - 1, 0, cols - 1)
  covered = np.zeros([rows, cols])
  np.add.at(covered, (row[:, None], col[None, :]), area)
  return covered / ((height / rows) * (width / cols))


def ground_truth_cells(coverage: np.ndarray, min_coverage: float = 0.5) -> np.ndarray:
  """GT on the grid: cells covered at least `min_coverage`; never empty (else the most covered).

  Args:
    coverage: [..., h, w] fractions from `box_coverage`.

  Returns:
    bool [..., h, w].
  """
  coverage = np.asarray(coverage)
  cells = coverage >= min_coverage
  flat_cov = coverage.reshape(-1, coverage.shape[-2] * coverage.shape[-1])
  flat = cells.reshape(flat_cov.shape).copy()
  empty = ~flat.any(axis=-1)
  flat[empty, np.argmax(flat_cov[empty], axis=-1)] = True
  return flat.reshape(cells.shape)


def box_pixel_mask(boxes, image_size: tuple[int, int]) -> np.ndarray:
  """bool [H, W]: pixels whose centre lies in the union of the boxes."""
  height, width = (int(v) for v in image_size)
  boxes = _check_boxes(boxes)
  yc, xc = np.arange(height) + 0.5, np.arange(width) + 0.5
  mask = np.zeros([height, width], bool)
  for ymin, xmin, ymax, xmax in boxes:
    mask |= ((ymin <= yc) & (yc < ymax))[:, None] & ((xmin <= xc) & (xc < xmax))[None, :]
  return mask


def pool_cam(cam: tf.Tensor, grid: int | None) -> tf.Tensor:
  """Grad-CAM maps [B, h, w] averaged over a grid x grid grid of cells (area resampling).

  grid=None keeps the native grid. The grid may not be finer than the native map.
  """
  if grid is None:
    return cam
  height, width = cam.shape[1], cam.shape[2]
  if height is not None and width is not None and (grid > height or grid > width):
    raise ValueError(f'The analysis grid {grid}x{grid} is finer than the Grad-CAM map '
                     f'{height}x{width}; use the native grid or a grid of at most '
                     f'{min(height, width)}.')
  return tf.image.resize(cam[..., None], (grid, grid), method='area')[..., 0]


def attention(cam, *, kappa_mode: str, kappa: float = 0.5,
              gt_cells: np.ndarray | None = None) -> np.ndarray:
  """Att(x) on the analysis grid as bool [B, h, w] (paper Eq. 3).

  Args:
    cam: Grad-CAM maps [B, h, w].
    kappa_mode: 'equal_area' (top |GT| cells: the image-specific kappa giving Att the area of
      GT; needs gt_cells), 'mean' (g >= per-image mean) or 'fixed' (g / max g >= kappa).
    kappa: the threshold for 'fixed', in [0, 1].
    gt_cells: bool [B, h, w], the ground truth on the grid ('equal_area' only).
  """
  cam = tf.convert_to_tensor(cam, tf.float32)
  if kappa_mode == 'equal_area':
    if gt_cells is None:
      raise ValueError("kappa_mode 'equal_area' needs gt_cells.")
    area = np.asarray(gt_cells).reshape(len(gt_cells), -1).sum(axis=-1).astype(np.int32)
    mask = gradcam_lib.attention_area(cam, top_k=area)
  elif kappa_mode == 'mean':
    mask = gradcam_lib.attention_area(cam, kappa='mean')
  elif kappa_mode == 'fixed':
    mask = gradcam_lib.attention_area(gradcam_lib.normalize_cam(cam), kappa=float(kappa))
  else:
    raise ValueError(f'kappa_mode must be one of {KAPPA_MODES}, got {kappa_mode!r}.')
  return mask.numpy() > 0


def top_cells(cam, k: int) -> np.ndarray:
  """bool [B, h, w]: exactly the k highest cells of each map (ties broken by position)."""
  return gradcam_lib.attention_area(tf.convert_to_tensor(cam, tf.float32), top_k=int(k)).numpy() > 0
