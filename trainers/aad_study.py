r"""Tables of the AAD studies: the screen, beside its Madry baseline.

  python -m trainers.aad_study --output_dir=docs/results/aad_study \
      --published=docs/results/aad_study/screen.json             # MNIST (aad_study.sh)
  python -m trainers.aad_study --study=cifar10 --output_dir=docs/results/cifar10_study

Reads the runs under --runs (default $AAD_TF_RUNS/aad_study, or $AAD_TF_RUNS/cifar10_study) and writes screen.md and
screen.json (see aad_tf.study) to --output_dir. With --published, rows of an earlier table whose
runs are not under --runs are kept (a run found there replaces its published row).

It also draws sensitivity.png (the paper's Fig. 8) from the rows of one Grad-CAM scaling
(--sensitivity_scaling) and the Madry baseline as alpha = beta = 0: accuracy against alpha at
--fixed_beta, and against beta at --fixed_alpha.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from aad_tf import runs
from aad_tf import study
from trainers import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_enum('study', 'mnist', list(study.LAYOUTS),
                    'Which study: mnist (docs/results/aad_study.sh) or cifar10 (cifar10_study.sh).')
  flags.DEFINE_string('runs', None, 'Directory holding the study runs (default: '
                      '$AAD_TF_RUNS/aad_study, AAD_TF_RUNS defaulting to ~/aad-tf-runs).')
  flags.DEFINE_string('published', None, 'A published screen.json whose rows are kept where '
                      'their runs are missing under --runs.')
  flags.DEFINE_string('output_dir', None, 'Where screen.md, screen.json and sensitivity.png go.')
  flags.DEFINE_string('sensitivity_scaling', 'rms_softmax',
                      'Grad-CAM scaling whose rows sensitivity.png shows (empty: no figure).')
  flags.DEFINE_float('fixed_alpha', 0.0, 'The alpha of the figure\'s varying-beta panel.')
  flags.DEFINE_float('fixed_beta', None, 'The beta of the figure\'s varying-alpha panel '
                     '(default: the most common beta of the rows).')


def sensitivity_points(rows, scaling: str) -> list:
  """The rows of `scaling`, and the baseline as alpha = beta = 0, as the figure's sweep points.

  Only rows of the default attention passes ('inference'): a run whose attention passes ran
  otherwise is another method, not another weight.
  """
  from aad_tf import figures  # matplotlib: only when a figure is drawn
  return [figures.SweepPoint(r.name, r.alpha, r.beta, r.accuracy) for r in rows
          if r.scaling == '-' or (r.scaling == scaling and r.attention_mode == 'inference')]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.output_dir:
    raise app.UsageError('--output_dir is required.')
  layout = study.LAYOUTS[FLAGS.study]
  runs_dir = FLAGS.runs or runs.runs_root('aad_study' if FLAGS.study == 'mnist' else
                                          'cifar10_study')
  rows = study.load_screen(runs_dir, layout)
  if FLAGS.published:
    rows = study.merge_published(rows, study.load_published(FLAGS.published))
  if not rows:
    raise app.UsageError(f'No screen run with screen/robustness.json under {runs_dir}.')
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  table = study.screen_table(rows, layout)
  examples = sorted({r.num_examples for r in rows})
  with open(os.path.join(FLAGS.output_dir, 'screen.md'), 'w') as f:
    f.write(f'# AAD screen (accuracy %, eps {layout.eps}, test images: {examples})\n\n'
            f'{table}\n')
  with open(os.path.join(FLAGS.output_dir, 'screen.json'), 'w') as f:
    json.dump(study.screen_json(rows), f, indent=2, sort_keys=True)
  logging.info('Wrote %d rows to %s.', len(rows), FLAGS.output_dir)
  points = (sensitivity_points(rows, FLAGS.sensitivity_scaling) if FLAGS.sensitivity_scaling
            else [])
  if len(points) > 1:
    from aad_tf import figures
    fig = figures.sensitivity_figure(
        points, fixed_alpha=FLAGS.fixed_alpha, fixed_beta=FLAGS.fixed_beta,
        attacks_to_plot=[a for a in layout.attacks if a != 'clean'],
        title=f'Sensitivity to the AAD loss weights ({FLAGS.sensitivity_scaling} maps)')
    logging.info('Wrote %s.', figures.save_png(fig, os.path.join(FLAGS.output_dir,
                                                                  'sensitivity.png')))
  print(table, flush=True)  # the table is the binary's result: printed once, on stdout


if __name__ == '__main__':
  define_flags()
  cli.run(main)
