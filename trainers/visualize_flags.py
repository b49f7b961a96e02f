"""trainers.visualize's flags: which figures, of which runs, and how the maps are made.

Every flag is optional; a run's own settings (dataset, data_dir, training attack, seed) come from
its config.json (aad_tf/runs.py) unless these flags override them.
"""

from absl import flags

from aad_tf import figures
from aad_tf import runs

FIGURES = ('attention', 'compare', 'evolution', 'robustness', 'sensitivity')


def define_flags() -> None:
  """Defines trainers.visualize's flags; every flag is optional."""
  flags.DEFINE_list('figures', ['attention', 'evolution'],
                    f'Figures to draw, any of: {", ".join(FIGURES)}.')
  flags.DEFINE_string('model_dir', None, 'The run for attention and evolution.')
  flags.DEFINE_list('runs', [], 'Run directories (globs allowed) for compare, robustness and '
                    'sensitivity.')
  flags.DEFINE_multi_string('curve', [], 'NAME=GLOB: one robustness curve from the accuracy '
                            'files matching GLOB (e.g. eval.json of runs at several eps); '
                            'repeatable; default one curve per --runs entry.')
  flags.DEFINE_string('output_dir', None, 'Where PNGs go (default <model_dir>/figures).')
  flags.DEFINE_string('sweep_file', 'eval.json',
                      "The sensitivity figure's accuracy file in each run, relative to it (e.g. "
                      "screen/robustness.json of docs/results/aad_study.sh).")
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
  flags.DEFINE_enum('weights', 'auto', list(runs.SOURCES),
                    'Weights of the attention and compare maps: auto (the newer of the latest '
                    'checkpoint and export/model.keras, see aad_tf/runs.py), keras or '
                    'checkpoint.')
