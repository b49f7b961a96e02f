r"""Draws PNG figures of runs: activation maps, their evolution, robustness and sensitivity curves.

  # Clean vs adversarial Grad-CAM of one run (Fig. 1) and its evolution over checkpoints (Fig. 6):
  python -m trainers.visualize --model_dir=/tmp/mnist_madry_aad --data_dir=../shared/data

  # Several runs side by side on the same images (Fig. 7 / 9):
  python -m trainers.visualize --figures=compare --runs=/tmp/mnist_madry,/tmp/mnist_madry_aad \
      --data_dir=../shared/data --output_dir=/tmp/figures

  # Accuracy vs eps (robustness.json or eval.json of each run) and alpha/beta sensitivity (Fig. 8):
  python -m trainers.visualize --figures=robustness,sensitivity --runs='/tmp/sweep/*' \
      --output_dir=/tmp/figures

Files written to --output_dir (default <model_dir>/figures): attention.png, compare.png,
evolution.png, robustness.png, sensitivity.png. The maps use the run's training attack unless
--eps / --attack_steps / --attack_step_size are given.
"""

import dataclasses
import os
from typing import Dict, List

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from aad_tf import data as data_lib
from aad_tf import figures
from aad_tf import training
from trainers import cli

FLAGS = flags.FLAGS
FIGURES = ('attention', 'compare', 'evolution', 'robustness', 'sensitivity')


def define_flags() -> None:
  flags.DEFINE_list('figures', ['attention', 'evolution'],
                    f'Figures to draw, any of: {", ".join(FIGURES)}.')
  flags.DEFINE_string('model_dir', None, 'The run for attention and evolution.')
  flags.DEFINE_list('runs', [], 'Run directories (globs allowed) for compare, robustness and '
                    'sensitivity.')
  flags.DEFINE_multi_string('curve', [], 'NAME=GLOB: one robustness curve from the accuracy '
                            'files matching GLOB (e.g. eval.json of runs at several eps); '
                            'repeatable; default one curve per --runs entry.')
  flags.DEFINE_string('output_dir', None, 'Where PNGs go (default <model_dir>/figures).')
  flags.DEFINE_string('data_dir', None, "Data directory (default: the run's --data_dir).")
  flags.DEFINE_integer('num_images', 8, 'Test images in attention and compare figures.',
                       lower_bound=1)
  flags.DEFINE_integer('evolution_images', 2, 'Test images in the evolution figure.',
                       lower_bound=1)
  flags.DEFINE_integer('max_checkpoints', 6, 'Most checkpoints in the evolution figure (evenly '
                       'chosen among those kept).', lower_bound=1)
  flags.DEFINE_bool('include_init', True, 'Evolution starts at step 0 (the initial weights, '
                    "rebuilt from the run's seed).")
  flags.DEFINE_enum('explain', 'label', list(figures.EXPLAIN),
                    'Grad-CAM of the true label or of the predicted class.')
  flags.DEFINE_float('eps', None, "Attack eps for the maps (default: the run's training eps).",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('attack_steps', None, 'PGD steps for the maps (default: training).',
                       lower_bound=0)
  flags.DEFINE_float('attack_step_size', None, 'PGD step size for the maps (default: training).',
                     lower_bound=0.0)
  flags.DEFINE_list('attacks', [], 'Attacks on the robustness and sensitivity curves (default: '
                    'all in the files).')
  flags.DEFINE_float('fixed_alpha', None, 'Alpha of the beta sweep (default: most common).')
  flags.DEFINE_float('fixed_beta', None, 'Beta of the alpha sweep (default: most common).')
  flags.DEFINE_integer('dpi', 110, 'PNG resolution.', lower_bound=50)


def expand(patterns: List[str]) -> List[str]:
  paths = []
  for pattern in patterns:
    matches = sorted(tf.io.gfile.glob(pattern)) if any(c in pattern for c in '*?[') else [pattern]
    if not matches:
      raise app.UsageError(f'No file or directory matches {pattern!r}.')
    paths.extend(p.rstrip('/') for p in matches)
  return paths


def name_of(run_dir: str) -> str:
  return os.path.basename(run_dir.rstrip('/'))


class RunMaps:
  """A run's config, test images and panel makers for its checkpoints."""

  def __init__(self, run_dir: str):
    try:
      self.config = training.load_config(run_dir)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    self.arrays = data_lib.load_arrays(self.config.dataset,
                                       data_dir=FLAGS.data_dir or self.config.data_dir,
                                       source=self.config.data_source)
    self.names = figures.class_names(self.config.dataset, self.config.info.num_classes)
    attack = self.config.defense.attack
    overrides = {'eps': FLAGS.eps, 'num_steps': FLAGS.attack_steps,
                 'step_size': FLAGS.attack_step_size}
    self.attack = dataclasses.replace(attack, **{k: v for k, v in overrides.items()
                                                 if v is not None})

  def examples(self, num: int):
    x, y = self.arrays.split('test')
    index = figures.pick_examples(y, num)
    return x[index], y[index]

  def maker(self, classifier, layer) -> figures.PanelMaker:
    return figures.PanelMaker(classifier, layer, self.attack, explain=FLAGS.explain,
                              seed=self.config.seed)

  def latest(self, num: int):
    classifier, layer, step = training.restore_classifier(self.config)
    return step, self.maker(classifier, layer)(*self.examples(num))


def draw_attention(out: str) -> str:
  run = RunMaps(FLAGS.model_dir)
  step, panel = run.latest(FLAGS.num_images)
  fig = figures.panel_figure(panel, run.names, dpi=FLAGS.dpi,
                             title=f'{name_of(FLAGS.model_dir)} at step {step}: where the model '
                             'looks, clean and under attack')
  return figures.save_png(fig, os.path.join(out, 'attention.png'))


def draw_compare(out: str) -> str:
  panels: Dict[str, figures.AttentionPanel] = {}
  for run_dir in expand(FLAGS.runs):
    run = RunMaps(run_dir)
    _, panels[name_of(run_dir)] = run.latest(FLAGS.num_images)
  names = run.names
  fig = figures.comparison_figure(panels, names, dpi=FLAGS.dpi,
                                  title='Grad-CAM of clean and adversarial images, per model')
  return figures.save_png(fig, os.path.join(out, 'compare.png'))


def draw_evolution(out: str) -> str:
  run = RunMaps(FLAGS.model_dir)
  kept = list(training.list_checkpoints(FLAGS.model_dir))
  if len(kept) > FLAGS.max_checkpoints:
    chosen = np.unique(np.linspace(0, len(kept) - 1, FLAGS.max_checkpoints).round().astype(int))
    kept = [kept[i] for i in chosen]
  # One classifier whose weights are swapped per checkpoint, so the maps are traced once.
  classifier, layer = training.initial_classifier(run.config)
  maker = run.maker(classifier, layer)
  x, y = run.examples(FLAGS.evolution_images)
  snapshots = []
  if FLAGS.include_init and (not kept or kept[0][0] > 0):
    snapshots.append((0, maker(x, y)))
  for step, path in kept:
    training.restore_classifier(run.config, path, classifier=classifier)
    snapshots.append((step, maker(x, y)))
  if not snapshots:
    raise app.UsageError(f'No checkpoint in {FLAGS.model_dir}/checkpoints.')
  fig = figures.evolution_figure(snapshots, run.names, dpi=FLAGS.dpi,
                                 title=f'{name_of(FLAGS.model_dir)}: Grad-CAM across training')
  return figures.save_png(fig, os.path.join(out, 'evolution.png'))


def draw_robustness(out: str) -> str:
  curves = {}
  if FLAGS.curve:
    for spec in FLAGS.curve:
      label, sep, pattern = spec.partition('=')
      if not sep:
        raise app.UsageError(f'--curve must be NAME=GLOB, got {spec!r}.')
      curves[label] = figures.merge_accuracy(expand([pattern]))
  for run_dir in expand(FLAGS.runs) if not FLAGS.curve else []:
    curves[name_of(run_dir)] = figures.merge_accuracy([figures.accuracy_file(run_dir)])
  if not curves:
    raise app.UsageError('robustness needs --runs or --curve.')
  fig = figures.robustness_figure(curves, attacks_to_plot=FLAGS.attacks or None, dpi=FLAGS.dpi,
                                  title='Accuracy under attack vs \u03b5')
  return figures.save_png(fig, os.path.join(out, 'robustness.png'))


def draw_sensitivity(out: str) -> str:
  points = [figures.sweep_point(run_dir) for run_dir in expand(FLAGS.runs)]
  fig = figures.sensitivity_figure(points, fixed_alpha=FLAGS.fixed_alpha,
                                   fixed_beta=FLAGS.fixed_beta,
                                   attacks_to_plot=FLAGS.attacks or None, dpi=FLAGS.dpi,
                                   title='Sensitivity to the AAD loss weights')
  return figures.save_png(fig, os.path.join(out, 'sensitivity.png'))


DRAW = {'attention': draw_attention, 'compare': draw_compare, 'evolution': draw_evolution,
        'robustness': draw_robustness, 'sensitivity': draw_sensitivity}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = sorted(set(FLAGS.figures) - set(FIGURES))
  if unknown:
    raise app.UsageError(f'--figures: unknown {unknown}; choose from {", ".join(FIGURES)}.')
  single = {'attention', 'evolution'} & set(FLAGS.figures)
  if single and not FLAGS.model_dir:
    raise app.UsageError(f'{", ".join(sorted(single))} need --model_dir.')
  if ({'compare', 'sensitivity'} & set(FLAGS.figures)) and not FLAGS.runs:
    raise app.UsageError('compare and sensitivity need --runs.')
  out = FLAGS.output_dir or (FLAGS.model_dir and os.path.join(FLAGS.model_dir, 'figures'))
  if not out:
    raise app.UsageError('--output_dir is required without --model_dir.')
  for name in FLAGS.figures:
    try:
      path = DRAW[name](out)
    except ValueError as e:
      raise app.UsageError(f'{name}: {e}') from e
    logging.info('Wrote %s.', path)
    print(path)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
