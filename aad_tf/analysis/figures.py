"""Figures of the attention analysis (`aad_tf.analysis`), in the style of the paper's Figs. 1-3, 10.

  attention_figure   Fig. 1: per example, the image with its box, the clean map and the
                     adversarial image's map; flipped (I_succeed) rows first, then held (I_fail)
  rounds_figure      Fig. 2: one row per example, the map after each iterative attack round
  lime_figure        Fig. 3: the image, its LIME mask and the adversarial image's LIME mask
  comparison_figure  Sec. 5.5 / Fig. 10: per example, each model's clean map and the map of its
                     own adversarial image

Maps are Grad-CAM maps upsampled bilinearly to the image and scaled into [0, 1] per map, drawn with
the 'jet' colormap at 45% opacity over the image; the ground-truth box is drawn in white. Figures
use matplotlib's object-oriented API (no pyplot), so importing this module changes no backend.
"""

from typing import Any, Sequence

import numpy as np
from matplotlib import patches
from matplotlib.figure import Figure
import tensorflow as tf

from aad_tf import gradcam as gradcam_lib

_PANEL = 2.0  # inches per panel


def _gray_or_rgb(image: np.ndarray) -> dict[str, Any]:
  image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
  if image.shape[-1] == 1:
    return {'X': image[..., 0], 'cmap': 'gray', 'vmin': 0.0, 'vmax': 1.0}
  return {'X': image}


def _upsampled(cam: np.ndarray, size) -> np.ndarray:
  cam = gradcam_lib.upsample_cam(tf.constant(cam[None], tf.float32), size)[0].numpy()
  peak = cam.max()
  return cam / peak if peak > 0 else cam


def _show(ax, image, cam=None, boxes=None, title: str = '', mask=None) -> None:
  ax.imshow(**_gray_or_rgb(image))
  if cam is not None:
    ax.imshow(_upsampled(cam, image.shape[:2]), cmap='jet', alpha=0.45, vmin=0.0, vmax=1.0)
  if mask is not None:
    ax.imshow(np.ma.masked_where(~mask, np.ones(mask.shape)), cmap='autumn', alpha=0.5,
              vmin=0.0, vmax=1.0)
  for ymin, xmin, ymax, xmax in np.asarray(boxes if boxes is not None else []).reshape(-1, 4):
    ax.add_patch(patches.Rectangle((xmin - 0.5, ymin - 0.5), xmax - xmin, ymax - ymin,
                                   fill=False, edgecolor='white', linewidth=1.2))
  ax.set_title(title, fontsize=7)
  ax.set_xticks([])
  ax.set_yticks([])


def _name(label: int, class_names: Sequence[str] | None) -> str:
  return class_names[label] if class_names is not None and label < len(class_names) else str(label)


def _grid(rows: int, cols: int, title: str) -> Figure:
  figure = Figure(figsize=(_PANEL * cols, _PANEL * rows + 0.4), layout='constrained')
  figure.suptitle(title, fontsize=9)
  return figure


def attention_figure(examples: dict[str, list[dict[str, Any]]], model: str, *,
                     class_names: Sequence[str] | None = None) -> Figure:
  """Fig. 1: rows of (image + box, clean map, adversarial map), flipped then held.

  Args:
    examples: `Analysis.examples`: {'flipped': [...], 'held': [...]}.
    model: which model's maps to draw.
  """
  rows = [('flipped', e) for e in examples['flipped']] + [('held', e) for e in examples['held']]
  if not rows:
    raise ValueError('No examples to draw.')
  figure = _grid(len(rows), 3, f'{model}: Grad-CAM of clean and StepLL images '
                                f'(flipped rows first, then held)')
  axes = figure.subplots(len(rows), 3, squeeze=False)
  for ax_row, (kind, e) in zip(axes, rows):
    m = e['models'][model]
    label = _name(e['label'], class_names)
    _show(ax_row[0], e['x'], boxes=e['boxes'], title=f'#{e["index"]} {kind}: label {label}')
    _show(ax_row[1], e['x'], m['cam'], e['boxes'],
          f'clean map, p={m["confidence"]:.2f}, IoU(Att,GT)={e["iou_gt"]:.2f}')
    adv_name = _name(m['adv_pred'], class_names)
    first_cells = min(e['iou_adv'])
    _show(ax_row[2], m['x_adv'], m['cam_adv'], e['boxes'],
          f'adv map, pred {adv_name} ({m["adv_confidence"]:.2f}), '
          f'IoU#{first_cells}={e["iou_adv"][first_cells]:.2f}')
  return figure


def rounds_figure(images: np.ndarray, boxes: Sequence[np.ndarray], labels: np.ndarray,
                  rounds: dict[str, np.ndarray], *, title: str,
                  class_names: Sequence[str] | None = None) -> Figure:
  """Fig. 2: per row, the image and its map at round 0 (clean) and after each attack round.

  Args:
    images: [B, H, W, C].
    boxes: B arrays [K, 4].
    labels: int [B].
    rounds: from `analysis.attack_rounds`: cam [R + 1, B, h, w], pred and confidence [R + 1, B].
  """
  num_rounds, batch = rounds['cam'].shape[0] - 1, len(images)
  figure = _grid(batch, num_rounds + 2, title)
  axes = figure.subplots(batch, num_rounds + 2, squeeze=False)
  for b in range(batch):
    _show(axes[b, 0], images[b], boxes=boxes[b],
          title=f'label {_name(int(labels[b]), class_names)}')
    for r in range(num_rounds + 1):
      pred = _name(int(rounds['pred'][r, b]), class_names)
      _show(axes[b, r + 1], images[b], rounds['cam'][r, b], boxes[b],
            f'{"clean" if r == 0 else f"round {r}"}: pred {pred}, '
            f'p(label)={rounds["confidence"][r, b]:.2f}')
  return figure


def lime_figure(examples: dict[str, list[dict[str, Any]]], num_features: int, *,
                class_names: Sequence[str] | None = None) -> Figure:
  """Fig. 3: rows of (image + box, LIME top features of x, of x_adv), flipped then held."""
  rows = [('flipped', e) for e in examples['flipped']] + [('held', e) for e in examples['held']]
  if not rows:
    raise ValueError('No LIME examples to draw.')
  figure = _grid(len(rows), 3, f'LIME, top {num_features} superpixels (flipped rows first)')
  axes = figure.subplots(len(rows), 3, squeeze=False)
  for ax_row, (kind, e) in zip(axes, rows):
    clean, adv = e['masks'][num_features]
    _show(ax_row[0], e['x'], boxes=e['boxes'],
          title=f'#{e["index"]} {kind}: label {_name(e["label"], class_names)}')
    _show(ax_row[1], e['x'], boxes=e['boxes'], mask=clean,
          title=f'clean, IoU(LIME,GT)={e["iou_gt"][num_features]:.2f}')
    _show(ax_row[2], e['x_adv'], boxes=e['boxes'], mask=adv,
          title=f'adv (pred {_name(e["adv_pred"], class_names)}), '
                f'IoU={e["iou_adv"][num_features]:.2f}')
  return figure


def comparison_figure(examples: dict[str, list[dict[str, Any]]], models: Sequence[str], *,
                      class_names: Sequence[str] | None = None) -> Figure:
  """Sec. 5.5 / Fig. 10: per example, the image, then each model's clean and adversarial maps.

  Each model is attacked on its own (its StepLL image); rows are flipped / held for the first.
  """
  rows = [('flipped', e) for e in examples['flipped']] + [('held', e) for e in examples['held']]
  if not rows:
    raise ValueError('No examples to draw.')
  cols = 1 + 2 * len(models)
  figure = _grid(len(rows), cols, 'Clean and StepLL maps across models (rows: flipped / held '
                                  'for the first model)')
  axes = figure.subplots(len(rows), cols, squeeze=False)
  for ax_row, (kind, e) in zip(axes, rows):
    _show(ax_row[0], e['x'], boxes=e['boxes'],
          title=f'#{e["index"]} {kind}: label {_name(e["label"], class_names)}')
    for j, name in enumerate(models):
      m = e['models'][name]
      _show(ax_row[1 + 2 * j], e['x'], m['cam'], e['boxes'],
            f'{name} clean, p={m["confidence"]:.2f}')
      _show(ax_row[2 + 2 * j], m['x_adv'], m['cam_adv'], e['boxes'],
            f'{name} adv: pred {_name(m["adv_pred"], class_names)} ({m["adv_confidence"]:.2f})')
  return figure


def save(figure: Figure, path: str, dpi: int = 110) -> str:
  """Writes the figure as PNG."""
  figure.savefig(path, dpi=dpi)
  return path
