"""Figures of where a classifier looks, clean and under attack, and of robustness sweeps.

Activation maps (paper Fig. 1, 6, 7, 9):

    maker = PanelMaker(classifier, 'gradcam', AttackConfig(eps=0.3, step_size=0.01, num_steps=40))
    panel = maker(x[:8], y[:8])                      # one compiled call: Grad-CAM clean + PGD
    save_png(panel_figure(panel, class_names('mnist')), 'maps.png')

  panel_figure       rows input / clean map / adversarial map, one column per image (also what
                     `aad_tf.summaries` writes to TensorBoard)
  comparison_figure  one row per image, (clean, adversarial) map columns per run (Fig. 7 / 9)
  evolution_figure   one image's clean and adversarial maps across checkpoints (Fig. 6)

Curves from JSON files written by evaluations:

  robustness_figure   accuracy vs eps, one panel per attack, one line per run
  sensitivity_figure  clean and adversarial accuracy vs alpha and vs beta (Fig. 8)

Accepted accuracy files (`read_accuracy`), accuracies as fractions in [0, 1]:

  eval.json        {"eps": 0.3, "accuracy": {"clean": 0.98, "fgsm": 0.95, "pgd20": 0.91, ...}}
  robustness.json  the same single-eps form, or a sweep, either
                   {"eps": [0.1, 0.2, 0.3], "accuracy": {"pgd20": [0.97, 0.95, 0.91], ...}}
                   or {"results": [{"eps": 0.1, "accuracy": {...}}, ...]}

Overlays are the Grad-CAM map of the explained class (the true label by default, as in the
training losses; or the prediction) scaled into [0, 1] per image, drawn with the 'jet' colormap at
45% opacity over the image. Text under each map: predicted class and its softmax confidence, green
when correct, red when wrong. Figures are built with the object-oriented matplotlib API on an Agg
canvas, so importing this module never changes pyplot's backend.
"""

import dataclasses
import io
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aad_tf import attacks
from aad_tf import defenses as defense_lib
from aad_tf import gradcam as gradcam_lib

CLASS_NAMES = {
    'mnist': tuple(str(i) for i in range(10)),
    'cifar10': ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                'truck'),
}
EXPLAIN = ('label', 'prediction')
OVERLAY_ALPHA = 0.45
CORRECT_COLOR = '#1a7f37'
WRONG_COLOR = '#cf222e'


def class_names(dataset: str, num_classes: int = 10) -> Tuple[str, ...]:
  """Display names of the classes of `dataset` (class ids as text for unknown datasets)."""
  return CLASS_NAMES.get(dataset, tuple(str(i) for i in range(num_classes)))


def pick_examples(labels: np.ndarray, num: int) -> np.ndarray:
  """Indices of `num` examples covering the classes in turn: the first 0, the first 1, ...

  A fixed, label-balanced choice, so panels from different runs show the same images.
  """
  labels = np.asarray(labels)
  if num < 1 or num > len(labels):
    raise ValueError(f'num must be in [1, {len(labels)}], got {num}.')
  by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
  chosen: List[int] = []
  while len(chosen) < num:
    for indices in by_class:
      if indices and len(chosen) < num:
        chosen.append(int(indices.pop(0)))
  return np.asarray(chosen)


# ---------------------------------------------------------------------------------------------
# Computing the maps.

@dataclasses.dataclass(frozen=True)
class AttentionPanel:
  """Grad-CAM maps of a few images and of their adversarial versions (NumPy).

  Attributes:
    images: float32 [N, H, W, C] in [0, 1].
    labels: int [N] true classes.
    cams: float32 [N, H, W] clean maps in [0, 1] (each scaled by its maximum), input resolution.
    probs: float32 [N, K] softmax on the clean images.
    adv_images: float32 [N, H, W, C], the attack's output.
    adv_cams: float32 [N, H, W] maps of the adversarial images.
    adv_probs: float32 [N, K].
    attack: a short description, e.g. 'PGD-40 eps=0.3'.
  """
  images: np.ndarray
  labels: np.ndarray
  cams: np.ndarray
  probs: np.ndarray
  adv_images: np.ndarray
  adv_cams: np.ndarray
  adv_probs: np.ndarray
  attack: str

  @property
  def predictions(self) -> np.ndarray:
    return self.probs.argmax(-1)

  @property
  def adv_predictions(self) -> np.ndarray:
    return self.adv_probs.argmax(-1)

  def take(self, indices) -> 'AttentionPanel':
    """The panel restricted to `indices`."""
    indices = np.asarray(indices)
    return dataclasses.replace(self, **{
        f.name: getattr(self, f.name)[indices]
        for f in dataclasses.fields(self) if f.name != 'attack'})


def describe_attack(attack: defense_lib.AttackConfig) -> str:
  if attack.num_steps == 0 or attack.eps == 0:
    return 'no attack (eps=0)' if attack.eps == 0 else f'random start eps={attack.eps:g}'
  return f'PGD-{attack.num_steps} eps={attack.eps:g}'


class PanelMaker:
  """Computes `AttentionPanel`s of a classifier with one compiled function.

  The adversarial images come from PGD with `attack` (the training attack of a run) against the
  classifier in inference mode, from a fixed random start (`seed`), so consecutive panels of a
  training run differ only because the weights changed.

  Args:
    classifier: functional keras.Model, images [B, H, W, C] in [0, 1] -> logits [B, K].
    gradcam_layer: name of its Grad-CAM layer.
    attack: the PGD configuration.
    explain: 'label' (Grad-CAM of the true class, as the AAD losses use) or 'prediction'.
    seed: seed of PGD's random start.
  """

  def __init__(self, classifier: keras.Model, gradcam_layer: str,
               attack: defense_lib.AttackConfig, *, explain: str = 'label', seed: int = 0):
    if explain not in EXPLAIN:
      raise ValueError(f'explain must be one of {EXPLAIN}, got {explain!r}.')
    if not isinstance(attack, defense_lib.AttackConfig):
      raise ValueError(f'attack must be a defense.AttackConfig, got {type(attack).__name__}.')
    image_shape = tuple(classifier.input_shape[1:])
    if None in image_shape:
      raise ValueError(f'The classifier needs a fixed input shape, got {image_shape}.')
    self.classifier = classifier
    self.attack = attack
    self.explain = explain
    features = gradcam_lib.FeatureModel(classifier, gradcam_layer)
    feature_fn = features.fn(training=False)
    model_fn = lambda images: classifier(images, training=False)
    size = image_shape[:2]
    pgd_seed = tf.constant([seed, 0], tf.int32)

    def maps(x, y):
      cam, logits = gradcam_lib.gradcam(feature_fn, x, y if explain == 'label' else None)
      cam = gradcam_lib.upsample_cam(gradcam_lib.normalize_cam(cam), size)
      return tf.clip_by_value(cam, 0.0, 1.0), tf.nn.softmax(tf.cast(logits, tf.float32))

    @tf.function(input_signature=(tf.TensorSpec([None, *image_shape], tf.float32),
                                  tf.TensorSpec([None], tf.int32)))
    def compute(x, y):
      x_adv = attacks.pgd(model_fn, x, y, eps=attack.eps, step_size=attack.step_size,
                          num_steps=attack.num_steps, random_init=attack.random_init,
                          seed=pgd_seed)
      cam, probs = maps(x, y)
      adv_cam, adv_probs = maps(x_adv, y)
      return cam, probs, x_adv, adv_cam, adv_probs

    self._compute = compute

  def __call__(self, images, labels) -> AttentionPanel:
    """Maps of `images` float [N, H, W, C] in [0, 1] with true `labels` int [N]."""
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels).astype(np.int32)
    if images.ndim != 4 or len(images) != len(labels) or not len(images):
      raise ValueError(f'Expected images [N, H, W, C] and labels [N] with N >= 1, got '
                       f'{images.shape} and {labels.shape}.')
    cam, probs, x_adv, adv_cam, adv_probs = (
        t.numpy() for t in self._compute(tf.constant(images), tf.constant(labels)))
    return AttentionPanel(images, labels, cam, probs, x_adv, adv_cam, adv_probs,
                          describe_attack(self.attack))


# ---------------------------------------------------------------------------------------------
# Drawing.

def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
  """A matplotlib Figure on its own Agg canvas (no pyplot state involved)."""
  fig = Figure(figsize=(width, height), dpi=dpi, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def to_png(fig: Figure) -> bytes:
  """The figure rendered as PNG bytes."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', facecolor='white')
  return buffer.getvalue()


def save_png(fig: Figure, path: str) -> str:
  """Writes the figure as a PNG file (any tf.io.gfile path); returns the path."""
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(to_png(fig))
  return path


def _show(ax, image: np.ndarray, cam: Optional[np.ndarray] = None):
  """Draws an image [H, W, C] in [0, 1], optionally under a map [H, W] in [0, 1]."""
  image = np.clip(image, 0.0, 1.0)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0.0, vmax=1.0, interpolation='nearest')
  else:
    ax.imshow(image, interpolation='nearest')
  overlay = None
  if cam is not None:
    overlay = ax.imshow(cam, cmap='jet', vmin=0.0, vmax=1.0, alpha=OVERLAY_ALPHA,
                        interpolation='bilinear')
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)
  return overlay


def _prediction_label(ax, probs: np.ndarray, label: int, names: Sequence[str],
                      fontsize: float) -> None:
  """Writes 'class  confidence%' under the axes, green if it is the true class, red if not."""
  pred = int(np.argmax(probs))
  ax.set_xlabel(f'pred {names[pred]} ({100 * probs[pred]:.0f}%)', fontsize=fontsize,
                color=CORRECT_COLOR if pred == int(label) else WRONG_COLOR, labelpad=2)


def _colorbar(fig: Figure, mappable, axes) -> None:
  if mappable is not None:
    bar = fig.colorbar(mappable, ax=axes, fraction=0.02, pad=0.01, aspect=30)
    bar.solids.set_alpha(1.0)  # the scale itself, not the translucent overlay
    bar.set_label('Grad-CAM (scaled per image)', fontsize=8)
    bar.ax.tick_params(labelsize=7)


def panel_figure(panel: AttentionPanel, names: Sequence[str], *, title: Optional[str] = None,
                 cell: float = 1.25, dpi: int = 100) -> Figure:
  """Rows input / clean map / adversarial map (Fig. 1 layout), one column per image.

  Args:
    panel: the maps of N images.
    names: class display names (see `class_names`).
    title: optional figure title (e.g. the run and step).
    cell: inches per image.
    dpi: resolution.
  """
  num = len(panel.images)
  fig = new_figure(cell * num + 1.4, cell * 3 + 0.9 + (0.25 if title else 0.0), dpi)
  axes = fig.subplots(3, num, squeeze=False)
  small = 9 if cell < 1.5 else 10
  mappable = None
  for i in range(num):
    label = int(panel.labels[i])
    _show(axes[0, i], panel.images[i])
    axes[0, i].set_title(f'label: {names[label]}', fontsize=small)
    _show(axes[1, i], panel.images[i], panel.cams[i])
    _prediction_label(axes[1, i], panel.probs[i], label, names, small)
    mappable = _show(axes[2, i], panel.adv_images[i], panel.adv_cams[i])
    _prediction_label(axes[2, i], panel.adv_probs[i], label, names, small)
  axes[0, 0].set_ylabel('input', fontsize=small + 1)
  axes[1, 0].set_ylabel('clean\nGrad-CAM', fontsize=small + 1)
  attack = panel.attack.replace(' eps=', '\n\u03b5=')
  axes[2, 0].set_ylabel(f'adversarial\n{attack}', fontsize=small + 1)
  _colorbar(fig, mappable, axes)
  if title:
    fig.suptitle(title, fontsize=small + 2)
  return fig


def overlay(images: np.ndarray, cams: np.ndarray) -> np.ndarray:
  """Maps [N, H, W] in [0, 1] drawn with 'jet' over images [N, H, W, C] (gray or RGB): [N, H, W, 3]."""
  base = np.clip(images, 0.0, 1.0)
  if base.shape[-1] == 1:
    base = np.repeat(base, 3, axis=-1)
  heat = colormaps['jet'](np.clip(cams, 0.0, 1.0))[..., :3]
  return (1.0 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * heat


def panel_image(panel: AttentionPanel, names: Sequence[str], *, title: Optional[str] = None,
                cell: int = 112, dpi: int = 100) -> np.ndarray:
  """`panel_figure`'s layout rendered cheaply as one uint8 image [height, width, 3].

  The cells are composed in NumPy and matplotlib only writes the text on one axes-free figure, so
  a panel of 8 images renders in tens of milliseconds: what `aad_tf.summaries` writes to
  TensorBoard during training.

  Args:
    panel: the maps of N images.
    names: class display names.
    title: optional title line.
    cell: approximate pixels per image side (images are enlarged by a whole factor, maps
      bilinearly).
    dpi: text resolution (font sizes are in points).
  """
  num, height, width = panel.images.shape[:3]
  scale = max(1, int(round(cell / max(height, width))))
  h, w = height * scale, width * scale
  big = lambda a: np.repeat(np.repeat(a, scale, axis=1), scale, axis=2)
  smooth = lambda m: tf.image.resize(m[..., None], (h, w), 'bilinear')[..., 0].numpy()
  images = big(np.clip(panel.images, 0.0, 1.0))
  rows = [np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images,
          overlay(images, smooth(panel.cams)),
          overlay(big(np.clip(panel.adv_images, 0.0, 1.0)), smooth(panel.adv_cams))]
  gap, text, left, bar = 10, 18, 112, 44
  top = 24 + (26 if title else 0)
  canvas_h = top + 3 * h + 2 * text + 2 * gap + text
  canvas_w = left + num * w + (num - 1) * gap + bar
  canvas = np.ones((canvas_h, canvas_w, 3), np.float32)
  row_y = [top, top + h + gap, top + 2 * h + text + 2 * gap]
  col_x = [left + i * (w + gap) for i in range(num)]
  for r, row in enumerate(rows):
    for i in range(num):
      canvas[row_y[r]:row_y[r] + h, col_x[i]:col_x[i] + w] = row[i]
  strip = colormaps['jet'](np.linspace(1.0, 0.0, 2 * h))[:, :3]  # the colour scale, 1 at the top
  bar_x = canvas_w - bar + 8
  canvas[row_y[1]:row_y[1] + 2 * h, bar_x:bar_x + 10] = strip[:, None, :]

  fig = Figure(figsize=(canvas_w / dpi, canvas_h / dpi), dpi=dpi)
  FigureCanvasAgg(fig)
  fig.figimage((canvas * 255).astype(np.uint8), origin='upper')

  def put(x, y, label, **kwargs):  # pixel coordinates from the top-left corner
    fig.text(x / canvas_w, 1.0 - y / canvas_h, label, **kwargs)

  if title:
    put(canvas_w / 2, 6, title, ha='center', va='top', fontsize=11)
  attack = panel.attack.replace(' eps=', '\n\u03b5=')
  for r, label in enumerate(('input', 'clean\nGrad-CAM', f'adversarial\n{attack}')):
    put(left - 10, row_y[r] + h / 2, label, ha='right', va='center', fontsize=9)
  for i in range(num):
    truth = int(panel.labels[i])
    put(col_x[i] + w / 2, row_y[0] - 4, f'label: {names[truth]}', ha='center', va='bottom',
        fontsize=9)
    for r, probs in ((1, panel.probs[i]), (2, panel.adv_probs[i])):
      pred = int(np.argmax(probs))
      put(col_x[i] + w / 2, row_y[r] + h + 2, f'pred {names[pred]} ({100 * probs[pred]:.0f}%)',
          ha='center', va='top', fontsize=8.5,
          color=CORRECT_COLOR if pred == truth else WRONG_COLOR)
  put(bar_x + 14, row_y[1], '1', ha='left', va='top', fontsize=7)
  put(bar_x + 14, row_y[1] + 2 * h, '0', ha='left', va='bottom', fontsize=7)
  put(bar_x + 16, row_y[1] + h, 'Grad-CAM', ha='left', va='center', fontsize=7, rotation=90)
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def comparison_figure(panels: Mapping[str, AttentionPanel], names: Sequence[str], *,
                      title: Optional[str] = None, cell: float = 1.35, dpi: int = 100) -> Figure:
  """One row per image: the input, then a (clean, adversarial) pair of maps per run (Fig. 7/9).

  Args:
    panels: run name -> panel of the same images (e.g. standard AT vs AAD).
    names: class display names.
    title: optional figure title.
  """
  if not panels:
    raise ValueError('comparison_figure needs at least one panel.')
  runs = list(panels)
  first = panels[runs[0]]
  for run in runs[1:]:
    if panels[run].images.shape != first.images.shape or not np.array_equal(
        panels[run].labels, first.labels):
      raise ValueError(f'Panel {run!r} does not show the same images as {runs[0]!r}.')
  num = len(first.images)
  cols = 1 + 2 * len(runs)
  fig = new_figure(cell * cols + 0.9, cell * num + 0.9 + (0.3 if title else 0.0), dpi)
  axes = fig.subplots(num, cols, squeeze=False)
  mappable = None
  for i in range(num):
    label = int(first.labels[i])
    _show(axes[i, 0], first.images[i])
    axes[i, 0].set_ylabel(f'label: {names[label]}', fontsize=9)
    for r, run in enumerate(runs):
      p = panels[run]
      ax_clean, ax_adv = axes[i, 1 + 2 * r], axes[i, 2 + 2 * r]
      _show(ax_clean, p.images[i], p.cams[i])
      _prediction_label(ax_clean, p.probs[i], label, names, 9)
      mappable = _show(ax_adv, p.adv_images[i], p.adv_cams[i])
      _prediction_label(ax_adv, p.adv_probs[i], label, names, 9)
      if i == 0:
        ax_clean.set_title(f'{run}\nclean', fontsize=9)
        ax_adv.set_title(f'{run}\n{p.attack}'.replace(' eps=', ' \u03b5='), fontsize=9)
  axes[0, 0].set_title('input', fontsize=9)
  _colorbar(fig, mappable, axes)
  if title:
    fig.suptitle(title, fontsize=11)
  return fig


def evolution_figure(snapshots: Sequence[Tuple[int, AttentionPanel]], names: Sequence[str], *,
                     title: Optional[str] = None, cell: float = 1.3, dpi: int = 100) -> Figure:
  """Maps across training (Fig. 6): for each image, clean (top) and adversarial (bottom) rows.

  Args:
    snapshots: (step, panel) pairs in training order; every panel shows the same images.
    names: class display names.
    title: optional figure title.
  """
  if not snapshots:
    raise ValueError('evolution_figure needs at least one (step, panel) snapshot.')
  steps = [int(s) for s, _ in snapshots]
  first = snapshots[0][1]
  num, cols = len(first.images), 1 + len(snapshots)
  fig = new_figure(cell * cols + 1.3, 2 * cell * num + 0.7 + 0.25 * num + (0.3 if title else 0),
                   dpi)
  grid = fig.add_gridspec(2 * num, cols)
  mappable = None
  for i in range(num):
    label = int(first.labels[i])
    ax = fig.add_subplot(grid[2 * i:2 * i + 2, 0])
    _show(ax, first.images[i])
    ax.set_title(f'label: {names[label]}', fontsize=9)
    for j, (step, panel) in enumerate(snapshots):
      ax_clean = fig.add_subplot(grid[2 * i, 1 + j])
      ax_adv = fig.add_subplot(grid[2 * i + 1, 1 + j])
      _show(ax_clean, panel.images[i], panel.cams[i])
      _prediction_label(ax_clean, panel.probs[i], label, names, 8)
      mappable = _show(ax_adv, panel.adv_images[i], panel.adv_cams[i])
      _prediction_label(ax_adv, panel.adv_probs[i], label, names, 8)
      if i == 0:
        ax_clean.set_title(f'step {step}', fontsize=9)
      if j == 0:
        ax_clean.set_ylabel('clean', fontsize=9)
        ax_adv.set_ylabel(f'adversarial\n{panel.attack}'.replace(' eps=', '\n\u03b5='),
                          fontsize=8)
  _colorbar(fig, mappable, fig.axes)
  fig.suptitle(title or f'Grad-CAM across training (steps {steps[0]} to {steps[-1]})',
               fontsize=11)
  return fig


# ---------------------------------------------------------------------------------------------
# Accuracy files and curves.

def read_accuracy(path: str) -> Dict[str, List[Tuple[float, float]]]:
  """Reads an eval.json / robustness.json into attack -> [(eps, accuracy), ...] sorted by eps.

  See the module docstring for the accepted layouts. 'clean' is kept as given (its eps is the
  file's eps); `robustness_figure` draws it at eps = 0.
  """
  with tf.io.gfile.GFile(path) as f:
    payload = json.load(f)
  records = payload.get('results') if isinstance(payload, dict) else payload
  if records is None:
    records = [payload]
  if not isinstance(records, list):
    raise ValueError(f'{path}: expected {{"eps", "accuracy"}} or {{"results": [...]}}.')
  curves: Dict[str, List[Tuple[float, float]]] = {}
  for record in records:
    if not isinstance(record, dict) or 'eps' not in record or 'accuracy' not in record:
      raise ValueError(f'{path}: every record needs "eps" and "accuracy" keys, got {record!r:.200}.')
    eps, accuracy = record['eps'], record['accuracy']
    if isinstance(eps, (list, tuple)):
      for name, values in accuracy.items():
        if not isinstance(values, (list, tuple)) or len(values) != len(eps):
          raise ValueError(f'{path}: accuracy[{name!r}] must be a list as long as "eps".')
        curves.setdefault(name, []).extend(zip(map(float, eps), map(float, values)))
    else:
      for name, value in accuracy.items():
        curves.setdefault(name, []).append((float(eps), float(value)))
  return {name: sorted(points) for name, points in curves.items()}


def merge_accuracy(paths: Sequence[str]) -> Dict[str, List[Tuple[float, float]]]:
  """`read_accuracy` of several files of one model (e.g. runs at different eps), merged."""
  merged: Dict[str, Dict[float, float]] = {}
  for path in paths:
    for name, points in read_accuracy(path).items():
      merged.setdefault(name, {}).update(points)
  return {name: sorted(points.items()) for name, points in merged.items()}


def robustness_figure(curves: Mapping[str, Mapping[str, Sequence[Tuple[float, float]]]], *,
                      attacks_to_plot: Optional[Sequence[str]] = None,
                      title: Optional[str] = None, dpi: int = 100) -> Figure:
  """Accuracy vs eps: one panel per attack, one line per model.

  Args:
    curves: model name -> attack -> [(eps, accuracy)] (see `merge_accuracy`). A model's clean
      accuracy, if present, is drawn as the eps = 0 point of each of its attack curves.
    attacks_to_plot: which attacks (default: every attack except 'clean' and 'worst_case').
    title: optional figure title.
  """
  if not curves:
    raise ValueError('robustness_figure needs at least one model.')
  names = list(attacks_to_plot or sorted(
      {a for c in curves.values() for a in c} - {'clean', 'worst_case'}))
  if not names:
    raise ValueError('No attack to plot: the files hold only clean accuracy.')
  cols = min(3, len(names))
  rows = int(math.ceil(len(names) / cols))
  fig = new_figure(4.2 * cols, 3.3 * rows + (0.3 if title else 0), dpi)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, attack in zip(axes, names):
    for model, by_attack in curves.items():
      points = dict(by_attack.get(attack, ()))
      if not points:
        continue
      if 'clean' in by_attack and 0.0 not in points:
        points[0.0] = by_attack['clean'][0][1]
      eps, acc = zip(*sorted(points.items()))
      ax.plot(eps, 100 * np.asarray(acc), marker='o', markersize=4, linewidth=1.6, label=model)
    ax.set_title(attack, fontsize=11)
    ax.set_xlabel('\u03b5 (L\u221e, images in [0, 1])', fontsize=9)
    ax.set_ylabel('accuracy (%)', fontsize=9)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc='lower left')
  for ax in axes[len(names):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title, fontsize=12)
  return fig


def _min_span(ax, span: float) -> None:
  """Widens the y range to at least `span` (percentage points) so noise does not look like a trend."""
  low, high = ax.get_ylim()
  if high - low < span:
    middle = (low + high) / 2
    ax.set_ylim(middle - span / 2, middle + span / 2)


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  """One run of an alpha/beta sweep: its weights and accuracies (fractions) by attack."""
  name: str
  alpha: float
  beta: float
  accuracy: Mapping[str, float]


def sensitivity_figure(points: Sequence[SweepPoint], *, fixed_alpha: Optional[float] = None,
                       fixed_beta: Optional[float] = None,
                       attacks_to_plot: Optional[Sequence[str]] = None,
                       title: Optional[str] = None, dpi: int = 100) -> Figure:
  """Fig. 8: accuracy vs alpha at fixed beta (left) and vs beta at fixed alpha (right).

  Clean accuracy is on the left axis, the accuracy under each attack on the right axis, as in
  the paper. Weights are placed at even spacing (the sweeps are logarithmic and include 0).

  Args:
    points: the sweep (runs without AAD count as alpha = beta = 0).
    fixed_alpha, fixed_beta: the weight held fixed in each panel (default: the most common
      value among the points).
    attacks_to_plot: attacks on the right axis (default: all but 'clean' and 'worst_case').
    title: optional figure title.
  """
  if not points:
    raise ValueError('sensitivity_figure needs at least one run.')

  def most_common(values):
    values = list(values)
    return max(sorted(set(values)), key=values.count)

  if fixed_beta is None:
    fixed_beta = most_common(p.beta for p in points)
  if fixed_alpha is None:
    fixed_alpha = most_common(p.alpha for p in points)
  names = list(attacks_to_plot or sorted(
      {a for p in points for a in p.accuracy} - {'clean', 'worst_case'}))
  fig = new_figure(10.5, 4.3 + (0.3 if title else 0), dpi)
  axes = fig.subplots(1, 2, squeeze=False)[0]
  legend = []
  panels = (('alpha', 'beta', fixed_beta, '(a)'), ('beta', 'alpha', fixed_alpha, '(b)'))
  for ax, (varied, held, value, tag) in zip(axes, panels):
    chosen = {}
    for p in points:
      if math.isclose(getattr(p, held), value, rel_tol=1e-9, abs_tol=1e-12):
        chosen[getattr(p, varied)] = p  # a later run with the same weight replaces an earlier one
    greek = {'alpha': '\u03b1', 'beta': '\u03b2'}
    ax.set_title(f'{tag} varying {greek[varied]} ({greek[held]} = {value:g})', fontsize=11)
    ax.set_xlabel(greek[varied], fontsize=11)
    ax.set_ylabel('clean accuracy (%)', fontsize=9)
    if not chosen:
      ax.text(0.5, 0.5, f'no runs with {held} = {value:g}', ha='center', va='center',
              transform=ax.transAxes)
      continue
    weights = sorted(chosen)
    x = np.arange(len(weights))
    clean = [100 * chosen[w].accuracy.get('clean', np.nan) for w in weights]
    handles = ax.plot(x, clean, color='black', marker='s', linewidth=1.8, label='clean')
    right = ax.twinx()
    for attack in names:
      acc = [100 * chosen[w].accuracy.get(attack, np.nan) for w in weights]
      handles += right.plot(x, acc, marker='o', linestyle='--', linewidth=1.4, label=attack)
    right.set_ylabel('adversarial accuracy (%)', fontsize=9)
    for axis, span in ((ax, 2.0), (right, 10.0)):
      _min_span(axis, span)
      axis.tick_params(labelsize=8)
    ax.set_xticks(x, [f'{w:g}' for w in weights])
    ax.set_xlim(-0.3, len(weights) - 0.7)
    ax.grid(alpha=0.3)
    legend = handles
  if legend:
    fig.legend(legend, [h.get_label() for h in legend], loc='outside lower center',
               ncol=len(legend), fontsize=9, frameon=False)
  if title:
    fig.suptitle(title, fontsize=12)
  return fig


def sweep_point(run_dir: str, eval_file: str = 'eval.json') -> SweepPoint:
  """A run of an alpha/beta sweep from its config.json and eval.json (no AAD: alpha = beta = 0)."""
  def read(name):
    path = os.path.join(run_dir, name)
    if not tf.io.gfile.exists(path):
      raise ValueError(f'{path} not found; every sweep run needs config.json and {eval_file}.')
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)

  defense = read('config.json').get('defense', {})
  aad = bool(defense.get('aad', False))
  accuracy = read(eval_file).get('accuracy')
  if not isinstance(accuracy, dict):
    raise ValueError(f'{os.path.join(run_dir, eval_file)} has no "accuracy" mapping.')
  return SweepPoint(os.path.basename(run_dir.rstrip('/')),
                    float(defense.get('alpha', 0.0)) if aad else 0.0,
                    float(defense.get('beta', 0.0)) if aad else 0.0,
                    {k: float(v) for k, v in accuracy.items()})


def accuracy_file(run_dir: str) -> str:
  """A run's accuracy file: robustness.json if present, else eval.json."""
  for name in ('robustness.json', 'eval.json'):
    path = os.path.join(run_dir, name)
    if tf.io.gfile.exists(path):
      return path
  raise ValueError(f'{run_dir} has neither robustness.json nor eval.json.')
