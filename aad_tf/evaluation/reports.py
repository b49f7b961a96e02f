"""trainers.evaluate's report: robustness.json (report, settings, versions) and robustness.md."""

import os
import platform
import subprocess
from typing import Any, Mapping, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf import files
from aad_tf.evaluation.loop import Report


def versions() -> dict[str, Optional[str]]:
  """The versions of Python, TensorFlow, Keras, NumPy and this checkout's commit."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                            text=True, timeout=10).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    commit = None
  return {'python': platform.python_version(), 'tensorflow': tf.__version__,
          'keras': keras.__version__, 'numpy': np.__version__, 'aad_tf_commit': commit}


def write_robustness(output_dir: str, report: Report, table: str, *, row_name: str,
                     dataset: str, model: str, source: str, eps: float, seed: int,
                     first_example: int, wall_time: float, settings: Mapping[str, Any]) -> None:
  """Writes robustness.json (the report, settings, versions) and robustness.md (the tables).

  robustness.json holds `Report.to_json()`: the accuracies, AutoAttack's accuracy after each
  stage ('stages') and the per-example flags as bit strings ('correct', `loop.to_bits`), so
  two evaluations compare example by example.

  Args:
    output_dir: created if needed.
    report: the suite's evaluation.Report (diagnostics included).
    table: evaluation.format_table(report, row_name=row_name).
    row_name: the evaluated model's name in the tables.
    dataset, model, source, eps, seed, first_example, wall_time: recorded as given.
    settings: the attack and diagnostic settings (recorded under 'settings').
  """
  tf.io.gfile.makedirs(output_dir)
  payload = {'dataset': dataset, 'model': model, 'source': source, 'eps': eps, 'seed': seed,
             'first_example': first_example, 'wall_time_s': wall_time, 'versions': versions(),
             'settings': dict(settings), **report.to_json()}
  files.write_json(os.path.join(output_dir, 'robustness.json'), payload)
  header = (f'# Robustness of {row_name}\n\n{dataset}, eps {eps:.4f}, '
            f'{report.num_examples} test examples, seed {seed}, {wall_time:.0f} s.\n'
            f'Accuracy (%) per attack; worst_case = correct under every attack.\n\n')
  with tf.io.gfile.GFile(os.path.join(output_dir, 'robustness.md'), 'w') as f:
    f.write(header + table + '\n')
  logging.info('Wrote %s/robustness.json and robustness.md.', output_dir)
