"""Opening a trained run: which weights the binaries that read a run use, by one rule.

A run of trainers.main keeps its weights twice: checkpoints (`checkpoints/ckpt-<step>`, written
during training) and the export (`export/model.keras`, written after it). They differ when a run
was resumed with `--noexport` (the export is stale) or exported and then trained on. The rule of
`load_classifier`, shared by trainers.evaluate, trainers.export and trainers.analyze:

  * auto: the newer of the two wins (file modification times; the export wins a tie, since
    trainers.main writes it after the last checkpoint), and the choice is logged with its reason;
    when every checkpoint fails to restore (corrupt) the export is used, and the reverse;
  * checkpoint: the newest checkpoint that restores (a corrupt newer one is skipped, logged and
    left in place), or exactly `checkpoint`;
  * keras: export/model.keras.
"""

import dataclasses
import os
from typing import Optional

import keras
import tensorflow as tf
from absl import logging

from aad_tf import checkpointing
from aad_tf import models
from aad_tf import training

SOURCES = ('auto', 'checkpoint', 'keras')


@dataclasses.dataclass
class LoadedRun:
  """A run's configuration and classifier.

  Attributes:
    config: the run's TrainConfig (from its config.json).
    classifier: the functional classifier, images [N, H, W, C] in [0, 1] -> logits [N, K].
    gradcam_layer: the name of its Grad-CAM layer.
    origin: where the weights came from, e.g. '/runs/a/checkpoints/ckpt-30 (step 30)'.
  """
  config: training.TrainConfig
  classifier: keras.Model
  gradcam_layer: str
  origin: str


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
    The LoadedRun.

  Raises:
    ValueError: not a run directory, a bad `source`, or no weights of the kind asked for.
    checkpointing.CheckpointError: the checkpoints asked for do not restore.
  """
  if source not in SOURCES:
    raise ValueError(f'source must be one of {SOURCES}, got {source!r}.')
  config = training.load_config(model_dir)
  layer = models.get_spec(config.model).gradcam_layer
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
  reason = 'asked for'
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
      classifier, layer, step = training.restore_classifier(config, checkpoint)
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
    origin = exported
  logging.info('Weights of %s: %s (%s).', model_dir, origin, reason)
  return LoadedRun(config, classifier, layer, origin)
