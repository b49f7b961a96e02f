"""Checkpoints that survive faults: atomic writes, the last K kept, exact resume.

A checkpoint holds the classifier, the optimizer (its step counter is the global step, which also
fixes the data position: see `aad_tf.data.train_dataset`) and the classifier's random state (the
seed generators of dropout layers, so that a resumed run draws the same masks), nothing else. TensorFlow writes each
checkpoint under a temporary name and renames it, and rewrites the `checkpoint` index atomically,
so an interrupted save never replaces the last good checkpoint.
"""

import errno
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; earlier checkpoints are untouched."""


class Checkpointer:
  """Saves and restores (classifier, optimizer) under `directory`.

  Args:
    directory: checkpoint directory (created if missing; an unwritable one is an error at once).
    classifier: the model whose weights are saved.
    optimizer: a built Keras optimizer.
    max_to_keep: how many recent checkpoints to keep.
    restore_directory: where `restore` looks for the latest checkpoint (default: `directory`).
      Non-chief workers of a multi-worker run write into a scratch directory but restore the
      chief's checkpoints (see aad_tf.distribute).
  """

  def __init__(self, directory: str, classifier: keras.Model, optimizer, max_to_keep: int = 3,
               restore_directory: Optional[str] = None):
    if max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1, got {max_to_keep}.')
    check_writable(directory)
    self.directory = directory
    self.restore_directory = restore_directory or directory
    self.classifier = classifier
    self.optimizer = optimizer
    rng = random_state(classifier)
    self._checkpoint = tf.train.Checkpoint(model=classifier, optimizer=optimizer,
                                           **({'rng': rng} if rng else {}))
    self._manager = tf.train.CheckpointManager(self._checkpoint, directory,
                                               max_to_keep=max_to_keep)

  @property
  def latest(self) -> Optional[str]:
    return self._manager.latest_checkpoint

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  def restore(self) -> int:
    """Restores the latest checkpoint if any; returns the global step (0 when starting fresh)."""
    if self.restore_directory == self.directory:
      path = self.latest
    else:
      path = tf.train.latest_checkpoint(self.restore_directory)
    if path is None:
      return 0
    try:
      status = self._checkpoint.restore(path)
      status.assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
      raise CheckpointError(
          f'Cannot restore {path}: {e}. It was written by a different model or optimizer; use '
          f'another --model_dir or delete it.') from e
    logging.info('Restored %s (step %d).', path, self.step)
    return self.step

  def save(self) -> Optional[str]:
    """Writes a checkpoint for the current step, unless one exists for it already."""
    step = self.step
    if self.latest is not None and self.latest.endswith(f'-{step}'):
      return self.latest
    # A NaN or Inf can reach the weights while the loss stays finite (oneDNN's fused conv + ReLU
    # turns a NaN activation into 0), so check what is about to be saved.
    bad = [v.path for v in self.classifier.weights if not np.isfinite(v.numpy()).all()]
    if bad:
      raise NonFiniteWeightsError(
          f'Weights {bad[:3]} became NaN or Inf by step {step}; stopping without saving them. The '
          f'last good checkpoint ({self.latest}) is kept; lower the learning rate or check the '
          f'input data.')
    try:
      path = self._manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
      raise CheckpointError(
          f'Could not write a checkpoint for step {step} in {self.directory} ({e}); the disk may '
          f'be full or the directory unwritable. The last good checkpoint is still '
          f'{self.latest}.') from e
    logging.info('Saved checkpoint %s.', path)
    return path


def random_state(model: keras.Model) -> list:
  """The model's variables that are not weights: the states of its layers' seed generators."""
  weights = {id(w) for w in model.weights}
  return [v for v in model.variables if id(v) not in weights]


def check_writable(directory: str) -> None:
  """Creates `directory` and checks a file can be written there, with a clear error if not."""
  try:
    tf.io.gfile.makedirs(directory)
    probe = os.path.join(directory, '.write_probe')
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('ok')
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as e:
    reason = 'the disk is full' if getattr(e, 'errno', None) == errno.ENOSPC else str(e)
    raise CheckpointError(f'Directory {directory} is not writable: {reason}.') from e


class CheckpointCallback(keras.callbacks.Callback):
  """Saves every `every_steps` optimizer steps and at the end of training."""

  def __init__(self, checkpointer: Checkpointer, every_steps: int):
    super().__init__()
    if every_steps < 1:
      raise ValueError(f'checkpoint interval must be >= 1, got {every_steps}.')
    self.checkpointer = checkpointer
    self.every_steps = every_steps

  def on_train_batch_end(self, batch, logs=None):
    if self.checkpointer.step % self.every_steps == 0:
      self.checkpointer.save()

  def on_train_end(self, logs=None):
    if not getattr(self.model, 'stop_training_on_nan', False):
      self.checkpointer.save()


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or Inf loss."""


class NonFiniteWeightsError(NonFiniteLossError):
  """The weights became NaN or Inf (found when saving, even if the loss stayed finite)."""


class StopOnNonFinite(keras.callbacks.Callback):
  """Stops with a clear error when any logged loss is NaN or Inf; nothing bad is checkpointed."""

  def __init__(self, checkpointer: Optional[Checkpointer] = None):
    super().__init__()
    self.checkpointer = checkpointer

  def on_train_batch_end(self, batch, logs=None):
    for name, value in (logs or {}).items():
      if name.endswith('loss') and not tf.math.is_finite(float(value)):
        self.model.stop_training_on_nan = True
        last = self.checkpointer.latest if self.checkpointer else None
        raise NonFiniteLossError(
            f'{name} became {float(value)} at step {batch + 1} of this epoch; stopping. The last '
            f'good checkpoint ({last}) is kept; lower the learning rate or the loss weights.')
