"""The paper's Sec. 3 attention data analysis on images with ground-truth boxes (Tables 1-5).

For a classifier f with a Grad-CAM layer, and images x with label l and ground-truth boxes:

1. I_att: the correctly classified images. Each is attacked with StepLL (paper Eq. 4) at `eps`
   and falls in I_succeed (the prediction changes) or I_fail (it holds).
2. Table 1: the share of each subset and its mean IoU(Att(x), GT(x)) (Eq. 5). Att(x) = g(x) >=
   kappa with kappa per `kappa_mode`: 'equal_area' (the paper's Sec. 3.1: the image-specific kappa
   that makes Att and GT equally large, i.e. the top-|GT| cells), 'mean' (the per-image mean of
   g(x), the paper's default elsewhere) or 'fixed' (a fixed kappa on g(x) scaled by its maximum).
3. Table 2: among the images with IoU < 0.5, the share in each subset and the mean confidence
   (softmax probability of l on the clean image).
4. Table 3: the mean IoU(Att(x), Att(x_adv)) (Eq. 6), both keeping their top #cell grid cells.
5. Tables 4-5: Tables 1 and 3 again with LIME (Ribeiro et al. 2016) masks, the top n superpixels.

Geometry, one convention throughout:

* A box is (ymin, xmin, ymax, xmax) in continuous pixel coordinates of the model input: pixel
  (r, c) covers [r, r + 1) x [c, c + 1), so ymax and xmax are exclusive edges. An image may have
  several boxes; its ground truth is their union.
* Grad-CAM maps live on an analysis grid: the native [h, w] map of the Grad-CAM layer averaged
  over the cells of a g x g grid (`pool_cam`: area resampling; g = 8 is the 8x8 grid of the
  paper's InceptionV3 map), or the native grid itself (grid=None).
* The box is downsampled to that grid by cell coverage: GT(x) is the set of cells that the union
  of the boxes covers at least half (coverage computed exactly by `box_coverage`), and never
  empty (if no cell is half covered, the most covered one). IoU(Att, GT) and IoU(Att(x),
  Att(x_adv)) are then true intersection-over-union of cell sets on the same grid, whose cells all
  have the same area.
* LIME explains with superpixels, which are pixel sets, so Tables 4-5 are computed in pixels:
  Table 4 against the union of the boxes rasterised at pixel centres (`box_pixel_mask`), Table 5
  between the clean and adversarial LIME masks. Both explanations of an image use the clean
  image's superpixels, so the masks are unions of the same regions.

An all-zero Grad-CAM map (every weighted activation negative) has no attention area: its IoUs
are NaN, left out of the means, and counted in the report (`degenerate_maps`).

    models = [AnalyzedModel('raw', classifier, 'gradcam')]
    result = analyze(models, batches, AnalysisConfig(eps=0.1))   # batches: (x, y, boxes) tuples
    result.tables['raw']['table1']
    print(to_markdown(result))
"""

import contextlib
import dataclasses
import math
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf import attacks
from aad_tf import gradcam as gradcam_lib

KAPPA_MODES = ('equal_area', 'mean', 'fixed')
ADV_CAM_LABELS = ('true', 'predicted')
SEGMENTATIONS = ('quickshift', 'slic', 'grid')
SUBSETS = ('succeeded', 'failed')
LIME_INSTALL = "pip install lime==0.2.0.1 scikit-image==0.26.0   (or pip install -e '.[analysis]')"

# A batch of the analysed data: images [B, H, W, C] in [0, 1], int labels [B], and for each
# image its boxes, a float array [K_i, 4] of (ymin, xmin, ymax, xmax) in input pixels.
Batch = Tuple[np.ndarray, np.ndarray, Sequence[np.ndarray]]


# ---------------------------------------------------------------------------------------------
# Geometry: masks, boxes, IoU.

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


def box_coverage(boxes, image_size: Tuple[int, int], grid_size: Tuple[int, int]) -> np.ndarray:
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


def box_pixel_mask(boxes, image_size: Tuple[int, int]) -> np.ndarray:
  """bool [H, W]: pixels whose centre lies in the union of the boxes."""
  height, width = (int(v) for v in image_size)
  boxes = _check_boxes(boxes)
  yc, xc = np.arange(height) + 0.5, np.arange(width) + 0.5
  mask = np.zeros([height, width], bool)
  for ymin, xmin, ymax, xmax in boxes:
    mask |= ((ymin <= yc) & (yc < ymax))[:, None] & ((xmin <= xc) & (xc < xmax))[None, :]
  return mask


def pool_cam(cam: tf.Tensor, grid: Optional[int]) -> tf.Tensor:
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
              gt_cells: Optional[np.ndarray] = None) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# LIME (imported lazily: an optional dependency).

def import_lime():
  """Returns `lime.lime_image`, or raises ImportError saying how to install it."""
  try:
    from lime import lime_image  # pylint: disable=g-import-not-at-top
    from lime.wrappers import scikit_image  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(f'Tables 4-5 need the `lime` package (and scikit-image): {LIME_INSTALL}. '
                      f'Or skip them with no LIME features (--lime_features=).') from e
  return lime_image


def segment(image: np.ndarray, method: str, *, num_segments: int = 64, grid: int = 8,
            seed: int = 0) -> np.ndarray:
  """Superpixels of one image [H, W, C] in [0, 1] as int labels 0..S-1, shape [H, W].

  'quickshift' is LIME's default (kernel 4, max_dist 200, ratio 0.2: made for photographs),
  'slic' asks skimage's SLIC for about `num_segments`, 'grid' cuts a grid x grid grid.
  """
  height, width = image.shape[:2]
  if method == 'grid':
    rows = np.minimum((np.arange(height) + 0.5) * grid // height, grid - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * grid // width, grid - 1).astype(int)
    return rows[:, None] * grid + cols[None, :]
  if method not in SEGMENTATIONS:
    raise ValueError(f'segmentation must be one of {SEGMENTATIONS}, got {method!r}.')
  import_lime()
  # pylint: disable-next=g-import-not-at-top
  from lime.wrappers.scikit_image import SegmentationAlgorithm
  rgb = _rgb(image)
  if method == 'quickshift':
    algorithm = SegmentationAlgorithm('quickshift', kernel_size=4, max_dist=200, ratio=0.2,
                                      random_seed=seed)
  else:
    algorithm = SegmentationAlgorithm('slic', n_segments=num_segments, compactness=10,
                                      start_label=0)
  labels = algorithm(rgb)
  return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def _rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float64)
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


@contextlib.contextmanager
def _quiet_lime(lime_image):
  # lime 0.2.0.1 wraps every explanation's sampling loop in a tqdm progress bar it cannot turn
  # off; hundreds of bars would bury the log.
  saved = lime_image.tqdm
  lime_image.tqdm = lambda iterable, *args, **kwargs: iterable
  try:
    yield
  finally:
    lime_image.tqdm = saved


def lime_weights(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, label: int,
                 segments: np.ndarray, *, num_samples: int, seed: int,
                 batch_size: int = 100) -> np.ndarray:
  """LIME's per-superpixel weights for class `label` of one image.

  Args:
    predict: images [N, H, W, 3] float64 -> class probabilities [N, classes].
    image: [H, W, C] in [0, 1].
    label: the explained class.
    segments: int [H, W] superpixel ids 0..S-1 (used as is, so that two images can share them).
    num_samples: LIME's neighbourhood size.
    seed: seeds LIME's sampling.

  Returns:
    float64 [S]: the local linear model's weight of each superpixel (hidden superpixels take
    their mean colour, LIME's default).
  """
  lime_image = import_lime()
  explainer = lime_image.LimeImageExplainer(random_state=int(seed) % (2**32))
  with _quiet_lime(lime_image):
    explanation = explainer.explain_instance(
        _rgb(image), predict, labels=(int(label),), top_labels=None, num_samples=num_samples,
        batch_size=batch_size, segmentation_fn=lambda _: segments, random_seed=int(seed) % 1000)
  weights = np.zeros(int(segments.max()) + 1)
  for feature, weight in explanation.local_exp[int(label)]:
    weights[feature] = weight
  return weights


def lime_mask(segments: np.ndarray, weights: np.ndarray, num_features: int) -> np.ndarray:
  """bool [H, W]: the union of the `num_features` superpixels of largest weight for the class."""
  order = np.argsort(-weights, kind='stable')[:num_features]
  return np.isin(segments, order)


# ---------------------------------------------------------------------------------------------
# The analysis.

@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
  """Settings of one analysis (all validated at construction).

  Attributes:
    eps: StepLL's L-inf step (paper Eq. 4), images in [0, 1].
    kappa_mode: threshold of Att(x) for Tables 1-2: 'equal_area', 'mean' or 'fixed'.
    kappa: the 'fixed' threshold on max-normalised maps, in [0, 1].
    grid: side of the analysis grid (None: the native Grad-CAM grid).
    cells: the #cell values of Table 3.
    min_coverage: a grid cell belongs to GT if the boxes cover at least this fraction of it.
    low_iou: Table 2 looks at images with IoU(Att, GT) below this.
    adv_cam_label: Grad-CAM of x_adv for the 'true' label (as the training losses) or the
      'predicted' one.
    lime_features: the numbers of LIME features of Tables 4-5 (empty: no LIME).
    lime_examples: LIME explains the first this many images of I_att (two explanations each).
    lime_samples: LIME's neighbourhood size per explanation.
    lime_segmentation: 'quickshift' (LIME's default, for photographs), 'slic' or 'grid'.
    lime_segments: about how many superpixels 'slic' makes.
    batch_size: images per compiled call.
    seed: seeds LIME.
  """
  eps: float
  kappa_mode: str = 'equal_area'
  kappa: float = 0.5
  grid: Optional[int] = 8
  cells: Tuple[int, ...] = (5, 10, 20, 30)
  min_coverage: float = 0.5
  low_iou: float = 0.5
  adv_cam_label: str = 'true'
  lime_features: Tuple[int, ...] = (8, 10)
  lime_examples: int = 100
  lime_samples: int = 1000
  lime_segmentation: str = 'quickshift'
  lime_segments: int = 64
  batch_size: int = 100
  seed: int = 0

  def __post_init__(self):
    attacks.check_eps(self.eps)
    if self.kappa_mode not in KAPPA_MODES:
      raise ValueError(f'kappa_mode must be one of {KAPPA_MODES}, got {self.kappa_mode!r}.')
    if not 0.0 <= self.kappa <= 1.0:
      raise ValueError(f'kappa must be in [0, 1] (maps are scaled by their maximum), got '
                       f'{self.kappa}.')
    if self.grid is not None and (int(self.grid) != self.grid or self.grid < 1):
      raise ValueError(f'grid must be a positive int or None, got {self.grid!r}.')
    if not self.cells or any(int(c) != c or c < 1 for c in self.cells):
      raise ValueError(f'cells must be positive ints, got {self.cells!r}.')
    if self.grid is not None and max(self.cells) > self.grid**2:
      raise ValueError(f'cells {max(self.cells)} exceeds the {self.grid}x{self.grid} grid.')
    if any(int(n) != n or n < 1 for n in self.lime_features):
      raise ValueError(f'lime_features must be positive ints, got {self.lime_features!r}.')
    for name in ('min_coverage', 'low_iou'):
      if not 0.0 < getattr(self, name) <= 1.0:
        raise ValueError(f'{name} must be in (0, 1], got {getattr(self, name)}.')
    if self.adv_cam_label not in ADV_CAM_LABELS:
      raise ValueError(f'adv_cam_label must be one of {ADV_CAM_LABELS}, got '
                       f'{self.adv_cam_label!r}.')
    if self.lime_segmentation not in SEGMENTATIONS:
      raise ValueError(f'lime_segmentation must be one of {SEGMENTATIONS}, got '
                       f'{self.lime_segmentation!r}.')
    for name, low in (('lime_examples', 0), ('lime_samples', 1), ('lime_segments', 1),
                      ('batch_size', 1), ('seed', 0)):
      value = getattr(self, name)
      if int(value) != value or value < low:
        raise ValueError(f'{name} must be an int >= {low}, got {value!r}.')

  @property
  def uses_lime(self) -> bool:
    return bool(self.lime_features) and self.lime_examples > 0


@dataclasses.dataclass(frozen=True)
class AnalyzedModel:
  """A classifier (images in [0, 1] -> logits) and the name of its Grad-CAM layer."""
  name: str
  classifier: keras.Model
  gradcam_layer: str


class _Compiled:
  """One model's compiled batch computation: Grad-CAM clean, StepLL, Grad-CAM adversarial."""

  def __init__(self, model: AnalyzedModel, config: AnalysisConfig, image_shape):
    self.model = model
    features = gradcam_lib.FeatureModel(model.classifier, model.gradcam_layer)
    native = features.grid_shape
    if config.grid is not None and config.grid > min(native):
      raise ValueError(f'{model.name}: the analysis grid {config.grid}x{config.grid} is finer '
                       f'than its Grad-CAM map {native[0]}x{native[1]}; use the native grid '
                       f'(grid=None) or a grid of at most {min(native)}.')
    cells = (config.grid or 0)**2 or native[0] * native[1]
    if max(config.cells) > cells:
      raise ValueError(f'{model.name}: cells {max(config.cells)} exceeds its {cells} grid cells.')
    feature_fn = features.fn(training=False)
    model_fn = lambda x: model.classifier(x, training=False)
    spec = (tf.TensorSpec([None, *image_shape], tf.float32), tf.TensorSpec([None], tf.int32))

    @tf.function(input_signature=spec)
    def run(x, y):
      cam, logits = gradcam_lib.gradcam(feature_fn, x, y)
      x_adv = attacks.stepll(model_fn, x, eps=config.eps)
      logits_adv = model_fn(x_adv)
      pred_adv = tf.argmax(logits_adv, axis=-1, output_type=tf.int32)
      cam_adv, _ = gradcam_lib.gradcam(feature_fn, x_adv,
                                       y if config.adv_cam_label == 'true' else pred_adv)
      return {'cam': cam, 'cam_adv': cam_adv,
              'grid_cam': pool_cam(cam, config.grid),
              'grid_cam_adv': pool_cam(cam_adv, config.grid),
              'probs': tf.nn.softmax(tf.cast(logits, tf.float32)),
              'probs_adv': tf.nn.softmax(tf.cast(logits_adv, tf.float32)),
              'x_adv': x_adv}

    @tf.function(input_signature=(tf.TensorSpec([None, *image_shape], tf.float32),))
    def predict(x):
      return tf.nn.softmax(tf.cast(model_fn(x), tf.float32))

    self.run = run
    self._predict = predict
    self.channels = image_shape[-1]

  def predict_rgb(self, images: np.ndarray) -> np.ndarray:
    """LIME's classifier: [N, H, W, 3] float64 -> probabilities [N, classes]."""
    images = np.asarray(images, np.float32)
    if self.channels == 1:
      images = images[..., :1]
    return self._predict(images).numpy()


def attack_rounds(model: AnalyzedModel, x, y, *, eps: float, num_rounds: int = 5
                  ) -> Dict[str, np.ndarray]:
  """Grad-CAM over iterative attack rounds (paper Fig. 2).

  Round r is r steps of Iter-StepLL of size eps / num_rounds (least-likely class fixed from the
  clean prediction, projected into the eps ball), so the last round may use the whole budget.

  Returns:
    {'cam': [R + 1, B, h, w] (round 0 is clean), 'pred': [R + 1, B], 'confidence': [R + 1, B]
     (probability of the true label)}.
  """
  if int(num_rounds) < 1:
    raise ValueError(f'num_rounds must be >= 1, got {num_rounds}.')
  features = gradcam_lib.FeatureModel(model.classifier, model.gradcam_layer)
  feature_fn = features.fn(training=False)
  model_fn = lambda images: model.classifier(images, training=False)
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.convert_to_tensor(y, tf.int32)
  cams, preds, confs = [], [], []
  for r in range(num_rounds + 1):
    x_r = x if r == 0 else attacks.iter_stepll(model_fn, x, eps=eps, step_size=eps / num_rounds,
                                               num_steps=r)
    cam, logits = gradcam_lib.gradcam(feature_fn, x_r, y)
    probs = tf.nn.softmax(logits)
    cams.append(cam.numpy())
    preds.append(tf.argmax(logits, axis=-1).numpy())
    confs.append(tf.gather(probs, y, batch_dims=1).numpy())
  return {'cam': np.stack(cams), 'pred': np.stack(preds), 'confidence': np.stack(confs)}


@dataclasses.dataclass
class Analysis:
  """What `analyze` found.

  Attributes:
    config: the settings.
    records: model name -> per-example arrays [N] in the data's order: index, label, correct,
      confidence (clean probability of the label), adv_pred, adv_confidence, succeeded,
      gt_cells, degenerate_clean / degenerate_adv, iou_gt/<kappa mode>, iou_adv/<#cell>; and
      for the LIME subset [M]: lime/index, lime/succeeded, lime/iou_gt/<n>, lime/iou_adv/<n>.
    tables: model name -> {'summary', 'table1', ..., 'table5'} (JSON-ready).
    examples: figure material: the primary model's first flipped and held examples of I_att,
      with every model's maps for them (see `analyze`).
    lime_examples: the primary model's LIME masks for its first flipped and held examples.
  """
  config: AnalysisConfig
  records: Dict[str, Dict[str, Any]]
  tables: Dict[str, Dict[str, Any]]
  examples: Dict[str, Any]
  lime_examples: Dict[str, Any]

  @property
  def primary(self) -> str:
    return next(iter(self.tables))


def analyze(models: Sequence[AnalyzedModel], batches: Iterable[Batch], config: AnalysisConfig, *,
            num_figure_examples: int = 3) -> Analysis:
  """Runs the Sec. 3 analysis of every model over the same data in one pass.

  Args:
    models: the first is the primary model (figures); the others are compared with it (the
      paper's Sec. 5.5 view across defenses). All take the same input shape.
    batches: (x float [B, H, W, C] in [0, 1], y int [B], boxes: B arrays [K_i, 4]) tuples.
    config: the settings.
    num_figure_examples: flipped and held examples kept for the figures.

  Returns:
    An `Analysis`.
  """
  if not models:
    raise ValueError('Give at least one model.')
  names = [m.name for m in models]
  if len(set(names)) != len(names):
    raise ValueError(f'Model names must be unique, got {names}.')
  shapes = {tuple(m.classifier.input_shape[1:]) for m in models}
  if len(shapes) != 1 or None in next(iter(shapes)):
    raise ValueError(f'Models must share one fixed input shape, got {sorted(shapes)}.')
  image_shape = next(iter(shapes))
  if config.uses_lime:
    import_lime()  # Fails before any work if LIME is missing.
  compiled = [_Compiled(m, config, image_shape) for m in models]
  acc = {m.name: _Accumulator(config) for m in models}
  examples = {'flipped': [], 'held': []}
  lime_examples = {'flipped': [], 'held': []}
  offset, last_log = 0, time.time()
  for x, y, boxes in batches:
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    if x.shape[1:] != image_shape or len(y) != len(x) or len(boxes) != len(x):
      raise ValueError(f'A batch must hold x [B, {", ".join(map(str, image_shape))}], y [B] and '
                       f'B box arrays; got {x.shape}, {y.shape}, {len(boxes)}.')
    outs = [{k: v.numpy() for k, v in c.run(tf.constant(x), tf.constant(y)).items()}
            for c in compiled]
    for c, out in zip(compiled, outs):
      new_lime = acc[c.model.name].add(x, y, boxes, out, offset, c)
      if c is compiled[0]:
        _keep_lime_examples(lime_examples, new_lime, num_figure_examples)
    _keep_examples(examples, x, y, boxes, outs, [m.name for m in models], offset,
                   acc[models[0].name], num_figure_examples)
    offset += len(x)
    if time.time() - last_log > 30:
      last_log = time.time()
      logging.info('Analysed %d images (LIME: %d).', offset, acc[models[0].name].lime_count)
  if not offset:
    raise ValueError('The data held no examples.')
  tables = {m.name: acc[m.name].tables() for m in models}
  records = {m.name: acc[m.name].records() for m in models}
  for name, table in tables.items():
    summary = table['summary']
    logging.info('%s: %d examples, clean accuracy %.4f, StepLL eps %.4f flips %.4f of I_att.',
                 name, summary['num_examples'], summary['clean_accuracy'], config.eps,
                 summary['attack_success_rate'])
  return Analysis(config, records, tables, examples, lime_examples)


class _Accumulator:
  """Per-example statistics of one model, batch by batch."""

  def __init__(self, config: AnalysisConfig):
    self.config = config
    self.columns: Dict[str, List[np.ndarray]] = {}
    self.lime: Dict[str, List[np.ndarray]] = {}
    self.lime_count = 0

  def _append(self, store, values: Dict[str, np.ndarray]):
    for key, value in values.items():
      store.setdefault(key, []).append(np.asarray(value))

  def add(self, x, y, boxes, out, offset: int, compiled: _Compiled) -> List[Dict[str, Any]]:
    """Adds one batch; returns the LIME results it computed (for figures)."""
    config = self.config
    grid_cam, grid_cam_adv = out['grid_cam'], out['grid_cam_adv']
    grid_shape = grid_cam.shape[1:]
    coverage = np.stack([box_coverage(b, x.shape[1:3], grid_shape) for b in boxes])
    gt = ground_truth_cells(coverage, config.min_coverage)
    index = np.arange(offset, offset + len(x))
    label_prob = out['probs'][index - offset, y]
    correct = out['probs'].argmax(-1) == y
    pred_adv = out['probs_adv'].argmax(-1)
    clean_bad = grid_cam.reshape(len(x), -1).max(-1) <= 0
    adv_bad = grid_cam_adv.reshape(len(x), -1).max(-1) <= 0
    columns = {
        'index': index, 'label': y, 'correct': correct, 'confidence': label_prob,
        'adv_pred': pred_adv, 'adv_confidence': out['probs_adv'][index - offset, y],
        'succeeded': correct & (pred_adv != y), 'gt_cells': gt.reshape(len(x), -1).sum(-1),
        'degenerate_clean': clean_bad, 'degenerate_adv': adv_bad,
    }
    for mode in KAPPA_MODES:
      att = attention(grid_cam, kappa_mode=mode, kappa=config.kappa, gt_cells=gt)
      columns[f'iou_gt/{mode}'] = np.where(clean_bad, np.nan, iou(att, gt))
    for k in config.cells:
      value = iou(top_cells(grid_cam, k), top_cells(grid_cam_adv, k))
      columns[f'iou_adv/{k}'] = np.where(clean_bad | adv_bad, np.nan, value)
    self._append(self.columns, columns)
    if not config.uses_lime:
      return []
    return self._add_lime(x, y, boxes, out['x_adv'], index, columns, compiled)

  def _add_lime(self, x, y, boxes, x_adv, index, columns, compiled) -> List[Dict[str, Any]]:
    config = self.config
    results = []
    adv_labels = y if config.adv_cam_label == 'true' else columns['adv_pred']
    for i in np.flatnonzero(columns['correct']):
      if self.lime_count >= config.lime_examples:
        break
      self.lime_count += 1
      seed = config.seed * 1_000_003 + int(index[i])
      segments = segment(x[i], config.lime_segmentation, num_segments=config.lime_segments,
                         grid=config.grid or 8, seed=seed)
      kwargs = dict(segments=segments, num_samples=config.lime_samples, seed=seed,
                    batch_size=config.batch_size)
      weights = lime_weights(compiled.predict_rgb, x[i], int(y[i]), **kwargs)
      weights_adv = lime_weights(compiled.predict_rgb, x_adv[i], int(adv_labels[i]), **kwargs)
      gt = box_pixel_mask(boxes[i], x.shape[1:3])[None]
      row = {'index': index[i], 'succeeded': columns['succeeded'][i]}
      masks = {}
      for n in config.lime_features:
        clean = lime_mask(segments, weights, n)[None]
        adv = lime_mask(segments, weights_adv, n)[None]
        row[f'iou_gt/{n}'] = iou(clean, gt)[0]
        row[f'iou_adv/{n}'] = iou(clean, adv)[0]
        masks[n] = (clean[0], adv[0])
      self._append(self.lime, row)
      results.append({'index': int(index[i]), 'succeeded': bool(row['succeeded']),
                      'x': x[i], 'x_adv': x_adv[i], 'label': int(y[i]),
                      'adv_pred': int(columns['adv_pred'][i]), 'boxes': np.asarray(boxes[i]),
                      'segments': segments, 'masks': masks,
                      'iou_gt': {n: row[f'iou_gt/{n}'] for n in config.lime_features},
                      'iou_adv': {n: row[f'iou_adv/{n}'] for n in config.lime_features}})
    return results

  def records(self) -> Dict[str, Any]:
    out = {k: np.concatenate(v) for k, v in self.columns.items()}
    out.update({f'lime/{k}': np.stack(v) for k, v in self.lime.items()})
    return out

  def tables(self) -> Dict[str, Any]:
    return tables_from_records(self.records(), self.config)


def _keep_examples(examples, x, y, boxes, outs, names, offset, primary: _Accumulator, limit):
  last = {k: v[-1] for k, v in primary.columns.items()}  # The batch just added.
  for i in np.flatnonzero(last['correct']):
    kind = 'flipped' if last['succeeded'][i] else 'held'
    if len(examples[kind]) >= limit:
      continue
    examples[kind].append({
        'index': offset + int(i), 'x': x[i], 'label': int(y[i]), 'boxes': np.asarray(boxes[i]),
        'iou_gt': float(last[f'iou_gt/{primary.config.kappa_mode}'][i]),
        'iou_adv': {k: float(last[f'iou_adv/{k}'][i]) for k in primary.config.cells},
        'models': {name: {'cam': out['cam'][i], 'cam_adv': out['cam_adv'][i],
                          'x_adv': out['x_adv'][i], 'confidence': float(out['probs'][i, y[i]]),
                          'adv_pred': int(out['probs_adv'][i].argmax()),
                          'adv_confidence': float(out['probs_adv'][i].max())}
                   for name, out in zip(names, outs)}})


def _keep_lime_examples(store, results, limit):
  for result in results:
    kind = 'flipped' if result['succeeded'] else 'held'
    if len(store[kind]) < limit:
      store[kind].append(result)


# ---------------------------------------------------------------------------------------------
# Tables.

def _mean(values: np.ndarray) -> Dict[str, Any]:
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  n = int(values.size)
  mean = float(values.mean()) if n else None
  stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None
  return {'mean': mean, 'stderr': stderr, 'count': n}


def tables_from_records(records: Dict[str, np.ndarray], config: AnalysisConfig
                        ) -> Dict[str, Any]:
  """Tables 1-5 (and a summary) from per-example records, JSON-ready.

  Shares are fractions of I_att (Table 1) or of its images with IoU < low_iou (Table 2); IoU and
  confidence entries are {'mean', 'stderr', 'count'} over the examples where they are defined.
  """
  correct = records['correct'].astype(bool)
  succeeded = records['succeeded'].astype(bool)
  n_att = int(correct.sum())
  subsets = {'succeeded': correct & succeeded, 'failed': correct & ~succeeded}
  share = lambda mask, base: float(mask.sum() / base) if base else None
  summary = {
      'num_examples': int(correct.size), 'num_att': n_att,
      'clean_accuracy': float(correct.mean()) if correct.size else None,
      'attack_success_rate': share(subsets['succeeded'], n_att), 'eps': config.eps,
      'degenerate_maps': {'clean': int((records['degenerate_clean'] & correct).sum()),
                          'adversarial': int((records['degenerate_adv'] & correct).sum())},
      'mean_gt_cells': float(records['gt_cells'][correct].mean()) if n_att else None,
  }
  iou_gt = records[f'iou_gt/{config.kappa_mode}']
  table1 = {'kappa_mode': config.kappa_mode, 'num_att': n_att}
  for name, mask in subsets.items():
    table1[name] = {'count': int(mask.sum()), 'share': share(mask, n_att),
                    'iou': _mean(iou_gt[mask])}
  table1['iou_by_kappa'] = {mode: {name: _mean(records[f'iou_gt/{mode}'][mask])
                                   for name, mask in subsets.items()} for mode in KAPPA_MODES}
  low = correct & (iou_gt < config.low_iou)  # NaN compares False: degenerate maps are out.
  table2 = {'iou_below': config.low_iou, 'kappa_mode': config.kappa_mode, 'count': int(low.sum())}
  for name, mask in subsets.items():
    table2[name] = {'count': int((low & mask).sum()), 'share': share(low & mask, int(low.sum())),
                    'confidence': _mean(records['confidence'][low & mask])}
  table3 = {'grid': config.grid, 'rows': [
      {'cells': int(k), **{name: _mean(records[f'iou_adv/{k}'][mask])
                           for name, mask in subsets.items()}} for k in config.cells]}
  tables = {'summary': summary, 'table1': table1, 'table2': table2, 'table3': table3,
            'table4': None, 'table5': None}
  if config.uses_lime and 'lime/index' in records:
    lime_succeeded = records['lime/succeeded'].astype(bool)
    lime_subsets = {'succeeded': lime_succeeded, 'failed': ~lime_succeeded}
    for table, key in (('table4', 'iou_gt'), ('table5', 'iou_adv')):
      tables[table] = {
          'num_examples': int(lime_succeeded.size), 'segmentation': config.lime_segmentation,
          'samples': config.lime_samples,
          'rows': [{'features': int(n), **{name: _mean(records[f'lime/{key}/{n}'][mask])
                                           for name, mask in lime_subsets.items()}}
                   for n in config.lime_features]}
  return tables


# ---------------------------------------------------------------------------------------------
# Markdown.

def _fmt(entry: Optional[Dict[str, Any]], digits: int = 3) -> str:
  if not entry or entry.get('mean') is None:
    return 'n/a'
  text = f'{entry["mean"]:.{digits}f}'
  if entry.get('stderr') is not None:
    text += f' ± {entry["stderr"]:.{digits}f}'
  return text + f' (n={entry["count"]})'


def _pct(value: Optional[float]) -> str:
  return 'n/a' if value is None else f'{100 * value:.1f}%'


def format_tables(tables: Dict[str, Any]) -> str:
  """One model's Tables 1-5 in the paper's layout (mean ± standard error, n)."""
  t1, t2, t3 = tables['table1'], tables['table2'], tables['table3']
  grid = 'native' if t3['grid'] is None else f'{t3["grid"]}x{t3["grid"]}'
  lines = [
      f'**Table 1.** IoU(Att, GT), kappa = {t1["kappa_mode"]}, over I_att ({t1["num_att"]} '
      f'images).', '',
      '| | I_succeed | I_fail |', '|---|---|---|',
      f'| share | {_pct(t1["succeeded"]["share"])} | {_pct(t1["failed"]["share"])} |',
      f'| IoU(Att, GT) | {_fmt(t1["succeeded"]["iou"])} | {_fmt(t1["failed"]["iou"])} |', '',
      'IoU(Att, GT) under each kappa:', '', '| kappa | I_succeed | I_fail |', '|---|---|---|']
  for mode, row in t1['iou_by_kappa'].items():
    lines.append(f'| {mode} | {_fmt(row["succeeded"])} | {_fmt(row["failed"])} |')
  lines += [
      '', f'**Table 2.** Images with IoU(Att, GT) < {t2["iou_below"]} ({t2["count"]} images): '
      f'share and mean confidence in the true class.', '',
      '| | I_succeed | I_fail |', '|---|---|---|',
      f'| share | {_pct(t2["succeeded"]["share"])} | {_pct(t2["failed"]["share"])} |',
      f'| confidence | {_fmt(t2["succeeded"]["confidence"], 4)} | '
      f'{_fmt(t2["failed"]["confidence"], 4)} |', '',
      f'**Table 3.** IoU(Att(x), Att(x_adv)), top #cell cells of the {grid} grid.', '',
      '| #cell | I_succeed | I_fail |', '|---|---|---|']
  for row in t3['rows']:
    lines.append(f'| {row["cells"]} | {_fmt(row["succeeded"])} | {_fmt(row["failed"])} |')
  for key, title in (('table4', 'IoU(LIME mask, GT box), in pixels'),
                     ('table5', 'IoU(LIME mask of x, LIME mask of x_adv), in pixels')):
    table = tables[key]
    number = key[-1]
    if table is None:
      lines += ['', f'**Table {number}.** {title}: not computed (no LIME features).']
      continue
    lines += ['', f'**Table {number}.** {title}; first {table["num_examples"]} images of I_att, '
              f'{table["segmentation"]} superpixels, {table["samples"]} samples.', '',
              '| #features | I_succeed | I_fail |', '|---|---|---|']
    for row in table['rows']:
      lines.append(f'| {row["features"]} | {_fmt(row["succeeded"])} | {_fmt(row["failed"])} |')
  return '\n'.join(lines)


def format_comparison(tables: Dict[str, Dict[str, Any]]) -> str:
  """The Sec. 5.5 view: one row per model, attention statistics (succeeded / failed)."""
  first = next(iter(tables.values()))
  cells = [row['cells'] for row in first['table3']['rows']]
  header = ['model', 'clean acc', 'StepLL flips', 'IoU(Att,GT) succ / fail'] + [
      f'IoU ori-adv #{k} succ / fail' for k in cells]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  short = lambda e: 'n/a' if not e or e['mean'] is None else f'{e["mean"]:.3f}'
  for name, t in tables.items():
    s, t1 = t['summary'], t['table1']
    row = [name, _pct(s['clean_accuracy']), _pct(s['attack_success_rate']),
           f'{short(t1["succeeded"]["iou"])} / {short(t1["failed"]["iou"])}']
    row += [f'{short(r["succeeded"])} / {short(r["failed"])}' for r in t['table3']['rows']]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def to_markdown(result: Analysis, *, title: str = 'Attention data analysis (paper Sec. 3)',
                figures: Sequence[str] = (), settings: Optional[Dict[str, Any]] = None) -> str:
  """The whole report: settings, each model's tables, the comparison, figure links."""
  config = result.config
  lines = [f'# {title}', '']
  for key, value in {**(settings or {}), **dataclasses.asdict(config)}.items():
    lines.append(f'- {key}: {value}')
  lines += ['', 'IoUs are true intersection-over-union: Grad-CAM areas and the box (the cells '
            f'it covers at least {config.min_coverage:.0%}) on the same grid; LIME masks and '
            'the box in pixels. Entries: mean ± standard error (n).', '']
  for name, tables in result.tables.items():
    s = tables['summary']
    lines += [f'## {name}', '',
              f'{s["num_examples"]} images, clean accuracy {_pct(s["clean_accuracy"])}; StepLL '
              f'(eps {config.eps:.4g}) flips {_pct(s["attack_success_rate"])} of I_att '
              f'({s["num_att"]} images). All-zero Grad-CAM maps left out: '
              f'{s["degenerate_maps"]["clean"]} clean, {s["degenerate_maps"]["adversarial"]} '
              'adversarial.', '', format_tables(tables), '']
  if len(result.tables) > 1:
    lines += ['## Across models (Sec. 5.5)', '', format_comparison(result.tables), '']
  if figures:
    lines += ['## Figures', ''] + [f'![{f}]({f})' for f in figures] + ['']
  return '\n'.join(lines)


def to_json(result: Analysis, settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """The report as JSON: settings, the primary model's tables at top level, all under 'models'."""
  primary = result.tables[result.primary]
  return {'settings': {**(settings or {}), **dataclasses.asdict(result.config)},
          'model': result.primary, **primary, 'models': result.tables}
