r"""Tables of the AAD studies: the screen, beside its Madry baseline.

  python -m trainers.aad_study --output_dir=docs/results/aad_study \
      --published=docs/results/aad_study/screen.json             # MNIST (aad_study.sh)
  python -m trainers.aad_study --study=cifar10 --output_dir=docs/results/cifar10_study

Reads the runs under --runs (default $AAD_TF_RUNS/aad_study, or $AAD_TF_RUNS/cifar10_study) and writes screen.md and
screen.json (see aad_tf.study) to --output_dir. With --published, rows of an earlier table whose
runs are not under --runs are kept (a run found there replaces its published row).
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
  flags.DEFINE_string('output_dir', None, 'Where screen.md and screen.json go.')


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
  print(table, flush=True)  # the table is the binary's result: printed once, on stdout


if __name__ == '__main__':
  define_flags()
  cli.run(main)
