"""Opening a trained run: its settings (config.json) and its weights, by one rule.

Every binary that reads a run (trainers.evaluate, trainers.export, trainers.analyze,
trainers.visualize) opens it here: `load_config` for its settings, `load_classifier` for its
classifier; `load_exported` opens an exported model that is not a run directory.

Settings. config.json (written by training.train) holds the resolved TrainConfig: dataset, model,
defense and attack, seed, data location, the evaluation eps (`eval_eps`) and the Grad-CAM layer
(`gradcam_layer`). A later binary reads every setting from there, never from flags.txt. A
config.json written before it held eval_eps (issue 16) still loads: `load_config` then reads
--eval_eps from the run's flags.txt, logged once with how to migrate (add "eval_eps" to
config.json).

Weights. A run of trainers.main keeps them twice: checkpoints (`checkpoints/ckpt-<step>`, written
during training) and the export (`export/model.keras`, written after it). They differ when a run
was resumed with `--noexport` (the export is stale) or exported and then trained on. The rule of
`load_classifier`:

  * auto: the newer of the two wins (file modification times; the export wins a tie, since
    trainers.main writes it after the last checkpoint), and the choice is logged with its reason;
    when every checkpoint fails to restore (corrupt) the export is used, and the reverse;
  * checkpoint: the newest checkpoint that restores (a corrupt newer one is skipped, logged and
    left in place), or exactly `checkpoint`;
  * keras: export/model.keras.

Precision. Whatever the run trained in (config.json's `mixed_precision`), the classifier a reader
gets computes in float32 (`precision.float32_copy`): an attack on a bfloat16 network takes rounded
gradients and can be masked by them. The closing evaluation attacks a float32 copy too.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import keras
import tensorflow as tf
from absl import logging

from aad_tf import checkpointing
from aad_tf import evaluation
from aad_tf import files
from aad_tf import models
from aad_tf import precision
from aad_tf import summaries
from aad_tf import training

SOURCES = ('auto', 'checkpoint', 'keras')
RUNS_ROOT_ENV = 'AAD_TF_RUNS'
DEFAULT_RUNS_ROOT = '~/aad-tf-runs'
# Run directories whose old config.json was already reported (once per process).
_REPORTED_LEGACY = set()


def runs_root(*subdirs: str) -> str:
  """Where long runs live: `$AAD_TF_RUNS` (default ~/aad-tf-runs), joined with `subdirs`.

  Outside the checkout, so that a new session (which lays the checkout anew and loses its
  git-ignored runs/) finds the runs of the machine's earlier sessions and resumes them.
  """
  root = os.environ.get(RUNS_ROOT_ENV) or DEFAULT_RUNS_ROOT
  return os.path.join(os.path.abspath(os.path.expanduser(root)), *subdirs)


@dataclasses.dataclass
class LoadedRun:
  """A run's configuration and classifier.

  Attributes:
    config: the run's TrainConfig (from its config.json).
    classifier: the functional classifier, images [N, H, W, C] in [0, 1] -> logits [N, K].
    gradcam_layer: the name of its Grad-CAM layer (config.json's; the registry's for an older
      config.json).
    origin: where the weights came from, e.g. '/runs/a/checkpoints/ckpt-30 (step 30)'.
    step: the checkpoint's step; None for export/model.keras.
  """
  config: training.TrainConfig
  classifier: keras.Model
  gradcam_layer: str
  origin: str
  step: Optional[int] = None


@dataclasses.dataclass
class LoadedExport:
  """An exported model opened for evaluation (not a run directory).

  Attributes:
    target: what the attacks query (logits; Grad-CAM features when a .keras file names its
      Grad-CAM layer).
    name: the model's name ('saved_model' for a SavedModel).
    origin: the path it was loaded from.
  """
  target: evaluation.Target
  name: str
  origin: str


def read_flagfile(path: str) -> Dict[str, str]:
  """`--name=value` lines of a run's flags.txt as {name: value} (`--noname` -> 'false')."""
  values = {}
  if not tf.io.gfile.exists(path):
    return values
  with tf.io.gfile.GFile(path) as f:
    for line in f:
      line = line.strip()
      if not line.startswith('--'):
        continue
      name, sep, value = line[2:].partition('=')
      if sep:
        values[name] = value
      elif name.startswith('no'):
        values[name[2:]] = 'false'
      else:
        values[name] = 'true'
  return values


def _legacy_eval_eps(model_dir: str) -> Optional[float]:
  """--eval_eps of a run whose config.json predates the field: from its flags.txt, logged once."""
  path = os.path.join(model_dir, 'flags.txt')
  value = read_flagfile(path).get('eval_eps')
  eps = float(value) if value not in (None, '', 'None') else None
  if model_dir not in _REPORTED_LEGACY:
    _REPORTED_LEGACY.add(model_dir)
    found = (f'read --eval_eps={eps:g} from {path}' if eps is not None else
             f'{path} sets no --eval_eps: the dataset default applies')
    logging.warning('%s/config.json was written before config.json held eval_eps; %s. To '
                    'migrate, add "eval_eps": %s to that config.json.', model_dir, found,
                    'null' if eps is None else f'{eps!r}')
  return eps


def _read_config(model_dir: str) -> Tuple[training.TrainConfig, Dict[str, Any]]:
  """(the run's TrainConfig, eval_eps recovered for an old config.json; config.json as saved)."""
  config = training.load_config(model_dir)
  with tf.io.gfile.GFile(os.path.join(model_dir, 'config.json')) as f:
    saved = json.load(f)
  if 'eval_eps' not in saved:
    config = dataclasses.replace(config, eval_eps=_legacy_eval_eps(model_dir))
  return config, saved


def load_config(model_dir: str) -> training.TrainConfig:
  """The TrainConfig of the run in `model_dir`, from its config.json.

  Args:
    model_dir: a trainers.main run directory.

  Returns:
    The config (model_dir set to `model_dir`, wherever the run was trained); for a config.json
    written before it held eval_eps, eval_eps is the run's flags.txt --eval_eps (None when it
    set none: the dataset's default, which that run was evaluated at), logged once.

  Raises:
    ValueError: `model_dir` holds no config.json.
  """
  return _read_config(model_dir)[0]


def load_exported(path: str, *, gradcam_layer: Optional[str] = None) -> LoadedExport:
  """An exported SavedModel directory or .keras file, for evaluation.

  Args:
    path: a SavedModel directory (logits only: no Grad-CAM features) or a .keras file.
    gradcam_layer: the Grad-CAM layer of a .keras file; default: the model registry's entry of
      the classifier's name (none for an unknown name: the attacks that need features are
      skipped, logged).

  Raises:
    ValueError: `path` does not exist, does not load, or has no layer `gradcam_layer`.
  """
  if not tf.io.gfile.exists(path):
    raise ValueError(f'{path} does not exist.')
  if not path.endswith('.keras'):
    try:
      return LoadedExport(evaluation.Target.from_saved_model(path), 'saved_model', path)
    except (ValueError, OSError, tf.errors.OpError) as e:
      raise ValueError(f'Cannot load {path}: {e}') from e
  classifier = precision.float32_copy(keras.models.load_model(path, safe_mode=True, compile=False))
  layer = gradcam_layer
  if layer is None and classifier.name in models.available_models():
    layer = models.get_spec(classifier.name).gradcam_layer
  if layer is None:
    logging.warning('No Grad-CAM layer for %s (pass --gradcam_layer): A^3 and adaptive '
                    'attacks will be skipped.', path)
  return LoadedExport(evaluation.Target.from_keras(classifier, layer), classifier.name, path)


def keras_path(model_dir: str) -> str:
  return os.path.join(model_dir, 'export', 'model.keras')


def _mtime(path: str) -> float:
  return tf.io.gfile.stat(path).mtime_nsec / 1e9


def load_classifier(model_dir: str, *, source: str = 'auto',
                    checkpoint: Optional[str] = None) -> LoadedRun:
  """Loads the run's classifier from its checkpoints or its export, by the module's rule.

  Args:
    model_dir: a trainers.main run directory (config.json, checkpoints/, export/).
    source: 'auto' (the newer of the newest checkpoint and export/model.keras), 'checkpoint' or
      'keras'.
    checkpoint: a checkpoint path to restore (implies source 'checkpoint').

  Returns:
    The LoadedRun; its classifier computes in float32 whatever the run trained in.

  Raises:
    ValueError: not a run directory, a bad `source`, or no weights of the kind asked for.
    checkpointing.CheckpointError: the checkpoints asked for do not restore.
  """
  if source not in SOURCES:
    raise ValueError(f'source must be one of {SOURCES}, got {source!r}.')
  config, saved = _read_config(model_dir)
  layer = saved.get('gradcam_layer') or config.gradcam_layer
  exported = keras_path(model_dir)
  has_keras = tf.io.gfile.exists(exported)
  kept = checkpointing.checkpoints_newest_first(os.path.join(model_dir, 'checkpoints'))
  if checkpoint:
    source = 'checkpoint'
  if source == 'keras' and not has_keras:
    raise ValueError(f'{exported} does not exist.')
  if source == 'checkpoint' and not (kept or checkpoint):
    raise ValueError(f'No checkpoint in {model_dir}/checkpoints.')
  if source == 'auto' and not (kept or has_keras):
    raise ValueError(f'Neither a checkpoint in {model_dir}/checkpoints nor {exported}.')

  use_keras = source == 'keras'
  reason, step = 'asked for', None
  if source == 'auto':
    if not kept:
      use_keras, reason = True, 'the run has no checkpoint'
    elif not has_keras:
      reason = 'the run has no export/model.keras'
    else:
      newest = os.path.basename(kept[0][1])
      use_keras = _mtime(exported) >= _mtime(kept[0][1] + '.index')
      reason = (f'export/model.keras is newer than {newest}' if use_keras else
                f'{newest} is newer than export/model.keras')
  if not use_keras:
    try:
      classifier, _, step = training.restore_classifier(config, checkpoint)
    except checkpointing.CheckpointError as e:
      if source != 'auto' or not has_keras:
        raise
      logging.warning('%s; using %s instead.', e, exported)
      use_keras, reason = True, 'no checkpoint restores'
    else:
      path = checkpoint or os.path.join(model_dir, 'checkpoints', f'ckpt-{step}')
      origin = f'{path} (step {step})'
  if use_keras:
    classifier = keras.models.load_model(exported, safe_mode=True, compile=False)
    origin, step = exported, None
  logging.info('Weights of %s: %s (%s).', model_dir, origin, reason)
  return LoadedRun(config, precision.float32_copy(classifier), layer, origin, step)


def closing_evaluation(model, config: training.TrainConfig, dataset: tf.data.Dataset,
                       attacks: Mapping[str, Any], *, train_wall_time: float,
                       guard=None, writer=None, progress: bool = False
                       ) -> Tuple[evaluation.Report, str]:
  """Evaluates the trained classifier at config.eval_eps; writes eval.json and eval/* scalars.

  The attacks run on a float32 copy of the classifier (`precision.float32_copy`), whatever the
  training precision; eval.json records both.

  Args:
    model: the AADModel training.train returned.
    config: the run (eval_eps set).
    dataset: the test batches.
    attacks: evaluation.standard_attacks(...) of the closing evaluation.
    train_wall_time: seconds this invocation trained (recorded in eval.json).
    guard, writer: the run's overfitting.OverfitGuard and summaries.TrainSummaries (or None),
      whose summaries eval.json holds.
    progress: show a progress bar per attack.

  Returns:
    (the report, its Markdown table) for the binary to show.
  """
  classifier = precision.float32_copy(model.classifier)
  layer = models.get_spec(config.model).gradcam_layer
  report = evaluation.evaluate(classifier, dataset, attacks, gradcam_layer=layer,
                               seed=config.seed, progress=progress)
  table = evaluation.format_table(report, row_name=os.path.basename(config.model_dir.rstrip('/')))
  path = os.path.join(config.model_dir, 'eval.json')
  step = int(model.optimizer.iterations.numpy())
  files.write_json(path, {
      'dataset': config.dataset, 'model': config.model, 'eps': config.eval_eps,
      'seed': config.seed, 'training_precision': config.mixed_precision,
      'evaluation_precision': 'float32', **report.to_json(),
      # This invocation only (a resumed run counts from its restart), tracing included;
      # final_step is the optimizer step the model was trained to.
      'train': {'final_step': step, 'wall_time_s': train_wall_time},
      'overfit_guard': guard.summary() if guard else None,
      'aad_diagnostics': writer.aad_summary() if writer else None})
  logging.info('Wrote the closing evaluation to %s.', path)
  summaries.write_eval_scalars(summaries.log_dir(config.model_dir), step,
                               report.to_json()['accuracy'])
  return report, table
