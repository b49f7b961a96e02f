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
--eps / --attack_steps / --attack_step_size are given, and its weights by aad_tf/runs.py's rule
(--weights; the evolution figure steps through the kept checkpoints). The flags are defined in
trainers/visualize_flags.py.
"""

import os
from typing import Dict, List

import tensorflow as tf
from absl import app
from absl import flags

from aad_tf import figures
from aad_tf.figures import run_maps as run_maps_lib
from trainers import flagfiles
from trainers import visualize_flags

FLAGS = flags.FLAGS
FIGURES = visualize_flags.FIGURES


def define_flags() -> None:
  visualize_flags.define_flags()
  # --help lists the flags of the main module only: make the defined ones its key flags.
  flags.adopt_module_key_flags(visualize_flags)


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


def run_maps(run_dir: str) -> run_maps_lib.RunMaps:
  return run_maps_lib.RunMaps(run_dir, data_dir=FLAGS.data_dir, eps=FLAGS.eps,
                              num_steps=FLAGS.attack_steps, step_size=FLAGS.attack_step_size,
                              explain=FLAGS.explain)


def draw_attention(out: str) -> str:
  run = run_maps(FLAGS.model_dir)
  loaded, panel = run.latest(FLAGS.num_images, source=FLAGS.weights)
  weights = f'step {loaded.step}' if loaded.step is not None else 'its export'
  fig = figures.panel_figure(panel, run.names, dpi=FLAGS.dpi,
                             title=f'{name_of(FLAGS.model_dir)} at {weights}: where the model '
                             'looks, clean and under attack')
  return figures.save_png(fig, os.path.join(out, 'attention.png'))


def draw_compare(out: str) -> str:
  panels: Dict[str, figures.AttentionPanel] = {}
  for run_dir in expand(FLAGS.runs):
    run = run_maps(run_dir)
    _, panels[name_of(run_dir)] = run.latest(FLAGS.num_images, source=FLAGS.weights)
  fig = figures.comparison_figure(panels, run.names, dpi=FLAGS.dpi,
                                  title='Grad-CAM of clean and adversarial images, per model')
  return figures.save_png(fig, os.path.join(out, 'compare.png'))


def draw_evolution(out: str) -> str:
  run = run_maps(FLAGS.model_dir)
  snapshots = run.evolution(FLAGS.evolution_images, max_checkpoints=FLAGS.max_checkpoints,
                            include_init=FLAGS.include_init)
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
  points = [figures.sweep_point(run_dir, FLAGS.sweep_file) for run_dir in expand(FLAGS.runs)]
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
    # The paths written are the binary's result: printed once each, on stdout (not logged too).
    print(path, flush=True)


def run() -> None:
  """The console script `aad-visualize`: the same as `python -m trainers.visualize`."""
  flagfiles.run(main, define_flags)


if __name__ == '__main__':
  run()
