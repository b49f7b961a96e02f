r"""Collects runs (and their seeds) into the paper's table layout, next to the paper's numbers.

  python -m trainers.collect_results --dataset=mnist \
      --row=raw=runs/mnist_raw_cpu_s0 \
      --row=madry=runs/mnist_madry_cpu_s0,runs/mnist_madry_cpu_s1 \
      --row=madry_aad=runs/mnist_madry_aad_cpu_s0,runs/mnist_madry_aad_cpu_s1 \
      --output_dir=docs/results/mnist_cpu

Each --row is `key=dir[,dir...]`, one run directory of trainers.main per seed; keys raw, madry,
madry_aad, alp, alp_aad get the paper's Table 6 row beside ours. Writes tables.md and
results.json to --output_dir, and with --copy_json each run's eval.json / robustness.json as
<key>_s<seed>_eval.json / <key>_s<seed>_robustness.json (and the --grid_subdirs pieces), so the
published numbers travel with their sources. With --grid_subdirs (runs of trainers.evaluate
--eval_offset on the examples after the suite's) the paper grid table covers all of them, e.g.
the grid on 2000 images next to the full suite on the first 1000.
"""

import json
import os
import shutil

from absl import app
from absl import flags
from absl import logging

from aad_tf.evaluation import results
from trainers import cli

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_multi_string('row', [], "A table row 'key=run_dir[,run_dir...]' (one per seed).")
  flags.DEFINE_enum('dataset', None, sorted(results.PAPER_TABLE6),
                    'Which block of the paper\'s Table 6 to show (default: from the runs).')
  flags.DEFINE_string('suite_subdir', '',
                      'Where robustness.json sits inside each run directory.')
  flags.DEFINE_list('grid_subdirs', [],
                    'Directories (inside each run) of trainers.evaluate --eval_offset pieces '
                    'on the test examples after the suite\'s: the paper grid table merges them.')
  flags.DEFINE_string('output_dir', None, 'Where to write tables.md and results.json.')
  flags.DEFINE_bool('copy_json', True, 'Copy each run\'s eval.json / robustness.json too.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.row:
    raise app.UsageError('Pass at least one --row=key=run_dir[,run_dir...].')
  try:
    rows = [results.parse_row(spec, FLAGS.suite_subdir, FLAGS.grid_subdirs)
            for spec in FLAGS.row]
    report = results.format_report(rows, FLAGS.dataset)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(report, flush=True)  # the tables are the binary's result: printed once, on stdout
  if not FLAGS.output_dir:
    return
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, 'tables.md'), 'w') as f:
    f.write(report)
  with open(os.path.join(FLAGS.output_dir, 'results.json'), 'w') as f:
    json.dump(results.collect_json(rows), f, indent=1, sort_keys=True)
  if FLAGS.copy_json:
    for row in rows:
      for run in row.runs:
        sources = [('eval', os.path.join(run.model_dir, 'eval.json')),
                   ('robustness', os.path.join(run.model_dir, FLAGS.suite_subdir,
                                               'robustness.json'))]
        sources += [(f'{os.path.basename(os.path.normpath(sub))}_robustness',
                     os.path.join(run.model_dir, sub, 'robustness.json'))
                    for sub in FLAGS.grid_subdirs]
        for name, source in sources:
          if os.path.exists(source):
            shutil.copyfile(source, os.path.join(FLAGS.output_dir,
                                                 f'{row.key}_s{run.seed}_{name}.json'))
  logging.info('Wrote %s/tables.md and results.json.', FLAGS.output_dir)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
