"""Reading run directories' accuracy files; robustness and sensitivity curves."""

import dataclasses
import json
import math
import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from aad_tf.figures.plots import new_figure


def read_accuracy(path: str) -> dict[str, list[tuple[float, float]]]:
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
  curves: dict[str, list[tuple[float, float]]] = {}
  for record in records:
    if not isinstance(record, dict) or 'eps' not in record or 'accuracy' not in record:
      raise ValueError(f'{path}: every record needs "eps" and "accuracy" keys, got '
                       f'{record!r:.200}.')
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


def merge_accuracy(paths: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
  """`read_accuracy` of several files of one model (e.g. runs at different eps), merged."""
  merged: dict[str, dict[float, float]] = {}
  for path in paths:
    for name, points in read_accuracy(path).items():
      merged.setdefault(name, {}).update(points)
  return {name: sorted(points.items()) for name, points in merged.items()}


def robustness_figure(curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], *,
                      attacks_to_plot: Sequence[str] | None = None,
                      title: str | None = None, dpi: int = 100) -> Figure:
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
  """Widens the y range to at least `span` percentage points: noise must not look like a trend."""
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


def sensitivity_figure(points: Sequence[SweepPoint], *, fixed_alpha: float | None = None,
                       fixed_beta: float | None = None,
                       attacks_to_plot: Sequence[str] | None = None,
                       title: str | None = None, dpi: int = 100) -> Figure:
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
