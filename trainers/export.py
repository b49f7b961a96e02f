r"""Exports a run's classifier as a versioned SavedModel for TF Serving, and as a .keras file.

  python -m trainers.export --model_dir=/tmp/mnist_madry_aad --export_dir=/tmp/serving/aad/1

writes /tmp/serving/aad/1/ (signatures `serving_default` and `attention`, see aad_tf/export.py),
its MODEL_CARD.md and model_info.json (from the run's config.json and robustness.json, see
aad_tf/model_card.py), and /tmp/serving/aad/model-1.keras. The weights come from the newer of the
run's latest checkpoint that restores and <model_dir>/export/model.keras (the rule of
aad_tf/runs.py, shared by every binary that reads a run), or from --checkpoint / --source. Serve
the base directory with

  tensorflow_model_server --rest_api_port=8501 --model_name=aad --model_base_path=/tmp/serving/aad
"""

import os

from absl import app
from absl import flags
from absl import logging

from aad_tf import export as export_lib
from aad_tf import model_card
from aad_tf import runs
from trainers import flagfiles

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('model_dir', None, 'Training run directory (config.json, checkpoints/).')
  flags.DEFINE_string('export_dir', None,
                      'Version directory <base>/<version>, <version> a positive integer (the '
                      'layout TF Serving watches).')
  flags.DEFINE_enum('source', 'auto', ['auto', 'checkpoint', 'keras'],
                    'Weights: auto (the newer of the latest checkpoint and export/model.keras, '
                    'see aad_tf/runs.py), checkpoint or keras.')
  flags.DEFINE_string('checkpoint', None,
                      'A checkpoint path (<model_dir>/checkpoints/ckpt-<step>); default latest.')
  flags.DEFINE_bool('export_keras', True, 'Also write <base>/model-<version>.keras.')
  flags.DEFINE_bool('overwrite', False,
                    'Replace an existing version (TF Serving may be serving it).')


def version_of(export_dir: str) -> int:
  """The version number a TF Serving export directory ends with; UsageError if it does not."""
  name = os.path.basename(export_dir.rstrip('/'))
  if not name.isdigit() or int(name) < 1:
    raise app.UsageError(
        f'--export_dir must end in a positive integer version (TF Serving loads '
        f'<base>/<version>/), e.g. {os.path.join(export_dir.rstrip("/"), "1")}; '
        f'got {export_dir!r}.')
  return int(name)


def check_destination(export_dir: str, overwrite: bool) -> None:
  """Refuses to replace an existing version unless asked: a server may be serving it."""
  if os.path.exists(export_dir) and not overwrite:
    raise app.UsageError(f'{export_dir} exists; export a new version number or pass --overwrite.')


def load_classifier(model_dir: str, source: str, checkpoint):
  """(classifier, Grad-CAM layer, description of where the weights came from): runs' rule."""
  try:
    run = runs.load_classifier(model_dir, source=source, checkpoint=checkpoint)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  return run.classifier, run.gradcam_layer, run.origin


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.model_dir or not FLAGS.export_dir:
    raise app.UsageError('--model_dir and --export_dir are required.')
  export_dir = os.path.abspath(FLAGS.export_dir.rstrip('/'))
  version = version_of(export_dir)
  check_destination(export_dir, FLAGS.overwrite)
  classifier, layer, origin = load_classifier(FLAGS.model_dir, FLAGS.source, FLAGS.checkpoint)
  logging.info('Exporting %s from %s.', classifier.name, origin)
  export_lib.export_saved_model(classifier, layer, export_dir)
  written = [export_dir, *model_card.write(FLAGS.model_dir, export_dir)]
  if FLAGS.export_keras:
    written.append(export_lib.export_keras(
        classifier, os.path.join(os.path.dirname(export_dir), f'model-{version}.keras')))
  # What was written, and how to serve it, is the binary's result: printed once, on stdout.
  print(f'Exported {classifier.name} ({origin}) to:\n  ' + '\n  '.join(written) +
        f'\nServe with: tensorflow_model_server --rest_api_port=8501 --model_name=<name> '
        f'--model_base_path={os.path.dirname(export_dir)}', flush=True)


def run() -> None:
  """The console script `aad-export`: the same as `python -m trainers.export`."""
  flagfiles.run(main, define_flags)


if __name__ == '__main__':
  run()
