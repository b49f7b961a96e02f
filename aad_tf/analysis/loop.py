"""The analysis loop: StepLL on I_att, per-example records, Tables 1-5 (see aad_tf/analysis)."""

import dataclasses
import math
import time
from typing import Any, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf import attacks
from aad_tf import gradcam as gradcam_lib
from aad_tf.analysis.geometry import KAPPA_MODES
from aad_tf.analysis.geometry import attention
from aad_tf.analysis.geometry import box_coverage
from aad_tf.analysis.geometry import box_pixel_mask
from aad_tf.analysis.geometry import ground_truth_cells
from aad_tf.analysis.geometry import iou
from aad_tf.analysis.geometry import pool_cam
from aad_tf.analysis.geometry import top_cells
from aad_tf.analysis.lime_masks import SEGMENTATIONS
from aad_tf.analysis.lime_masks import import_lime
from aad_tf.analysis.lime_masks import lime_mask
from aad_tf.analysis.lime_masks import lime_weights
from aad_tf.analysis.lime_masks import segment


ADV_CAM_LABELS = ('true', 'predicted')
SUBSETS = ('succeeded', 'failed')

# A batch of the analysed data: images [B, H, W, C] in [0, 1], int labels [B], and for each
# image its boxes, a float array [K_i, 4] of (ymin, xmin, ymax, xmax) in input pixels.
Batch = tuple[np.ndarray, np.ndarray, Sequence[np.ndarray]]



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
  grid: int | None = 8
  cells: tuple[int, ...] = (5, 10, 20, 30)
  min_coverage: float = 0.5
  low_iou: float = 0.5
  adv_cam_label: str = 'true'
  lime_features: tuple[int, ...] = (8, 10)
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
                  ) -> dict[str, np.ndarray]:
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
  records: dict[str, dict[str, Any]]
  tables: dict[str, dict[str, Any]]
  examples: dict[str, Any]
  lime_examples: dict[str, Any]

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
    self.columns: dict[str, list[np.ndarray]] = {}
    self.lime: dict[str, list[np.ndarray]] = {}
    self.lime_count = 0

  def _append(self, store, values: dict[str, np.ndarray]):
    for key, value in values.items():
      store.setdefault(key, []).append(np.asarray(value))

  def add(self, x, y, boxes, out, offset: int, compiled: _Compiled) -> list[dict[str, Any]]:
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

  def _add_lime(self, x, y, boxes, x_adv, index, columns, compiled) -> list[dict[str, Any]]:
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

  def records(self) -> dict[str, Any]:
    out = {k: np.concatenate(v) for k, v in self.columns.items()}
    out.update({f'lime/{k}': np.stack(v) for k, v in self.lime.items()})
    return out

  def tables(self) -> dict[str, Any]:
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




def _mean(values: np.ndarray) -> dict[str, Any]:
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  n = int(values.size)
  mean = float(values.mean()) if n else None
  stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None
  return {'mean': mean, 'stderr': stderr, 'count': n}


def tables_from_records(records: dict[str, np.ndarray], config: AnalysisConfig
                        ) -> dict[str, Any]:
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
