"""Drawing map panels with matplotlib: panel, comparison and evolution figures, PNG bytes."""

import io
import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aad_tf.figures.panels import AttentionPanel


OVERLAY_ALPHA = 0.45
CORRECT_COLOR = '#1a7f37'
WRONG_COLOR = '#cf222e'



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


def _show(ax, image: np.ndarray, cam: np.ndarray | None = None):
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


def panel_figure(panel: AttentionPanel, names: Sequence[str], *, title: str | None = None,
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
  """Maps [N, H, W] in [0, 1] drawn with 'jet' over images [N, H, W, C] (gray or RGB).

  Returns:
    [N, H, W, 3] RGB.
  """
  base = np.clip(images, 0.0, 1.0)
  if base.shape[-1] == 1:
    base = np.repeat(base, 3, axis=-1)
  heat = colormaps['jet'](np.clip(cams, 0.0, 1.0))[..., :3]
  return (1.0 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * heat


def panel_image(panel: AttentionPanel, names: Sequence[str], *, title: str | None = None,
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
                      title: str | None = None, cell: float = 1.35, dpi: int = 100) -> Figure:
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


def evolution_figure(snapshots: Sequence[tuple[int, AttentionPanel]], names: Sequence[str], *,
                     title: str | None = None, cell: float = 1.3, dpi: int = 100) -> Figure:
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
