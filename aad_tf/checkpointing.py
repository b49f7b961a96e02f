"""Checkpoints that survive faults: atomic writes, the last K kept, exact resume.

A checkpoint holds the classifier, the optimizer (its step counter is the global step, which also
fixes the data position: see `aad_tf.data.train_dataset`) and the classifier's random state (the
seed generators of dropout layers, so that a resumed run draws the same masks), nothing else. TensorFlow writes each
checkpoint under a temporary name and renames it, and rewrites the `checkpoint` index atomically,
so an interrupted save never replaces the last good checkpoint.

Restoring takes the newest checkpoint that restores: a corrupt one (a truncated file, a checksum
that fails) is skipped with one log line saying which and why, and never deleted; a training run
moves it into `checkpoints/corrupt/` so that neither rotation nor a later save at its step can
overwrite it (`Checkpointer.restore`).
"""

import errno
import os
import re
import time
from typing import Callable, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; earlier checkpoints are untouched."""


# What a failed restore raises: OpError (missing key, bad index, checksum), IndexError (a
# truncated data file: "Read less bytes than requested"), ValueError (a shape mismatch),
# AssertionError (assert_existing_objects_matched).
RESTORE_ERRORS = (tf.errors.OpError, IndexError, ValueError, AssertionError)
_CORRUPT = re.compile(r'checksum|corrupt|truncat|read less bytes|bad magic|not an sstable|'
                      r'data loss|unexpected end|crc', re.IGNORECASE)
_CHECKPOINT_FILE = re.compile(r'^(?P<prefix>.+)-(?P<step>\d+)\.index$')


def restore_failure(error: BaseException) -> str:
  """Why a checkpoint did not restore, in a few words: 'corrupt' or 'a different model'.

  Args:
    error: what `tf.train.Checkpoint.restore` (or the status assertion) raised.

  Returns:
    'corrupt (<reason>)' when the files are damaged (truncated, checksum mismatch, bad index),
    else 'written by a different model or optimizer (<reason>)'.
  """
  reason = short_error(error)
  if isinstance(error, (tf.errors.DataLossError, IndexError)) or _CORRUPT.search(str(error)):
    return f'corrupt ({reason})'
  return f'written by a different model or optimizer ({reason})'


def short_error(error: BaseException, limit: int = 200) -> str:
  """The first line of an error message without TensorFlow's op and function decorations."""
  lines = str(error).strip().splitlines() or [type(error).__name__]
  text = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', lines[0])
  text = re.sub(r'\s*\[Op:\w+\]', '', text).strip() or type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + '...'


def checkpoints_newest_first(directory: str) -> List[Tuple[int, str]]:
  """The checkpoints in `directory` as (step, path prefix), newest first.

  Read from the files themselves (`<prefix>-<step>.index`), so that a damaged `checkpoint` index
  file or one naming deleted checkpoints does not hide the ones that are there.
  """
  if not tf.io.gfile.isdir(directory):
    return []
  found = []
  for name in tf.io.gfile.listdir(directory):
    match = _CHECKPOINT_FILE.match(name.rstrip('/'))
    if match:
      found.append((int(match['step']), os.path.join(directory, name[:-len('.index')])))
  return sorted(found, reverse=True)


def restore_newest(make_checkpoint: Callable[[], tf.train.Checkpoint], directory: str, *,
                   partial: bool = False, path: Optional[str] = None
                   ) -> Tuple[Optional[str], List[Tuple[str, str]]]:
  """Restores the newest checkpoint of `directory` that restores (or exactly `path`).

  Args:
    make_checkpoint: builds a fresh `tf.train.Checkpoint` of the objects to restore (one per
      attempt, so that a failed attempt leaves no pending restorations behind).
    directory: the checkpoint directory.
    partial: restore only the objects `make_checkpoint` tracks (e.g. the classifier without its
      optimizer): `expect_partial`.
    path: restore this checkpoint and no other.

  Returns:
    (the restored checkpoint's path or None when there is none, [(path, why) of each newer
    checkpoint that did not restore]).

  Raises:
    CheckpointError: no checkpoint restores; the message says whether they are corrupt or were
      written by a different model.
  """
  if path and not tf.io.gfile.exists(path + '.index'):
    raise CheckpointError(f'Checkpoint {path} not found (no {os.path.basename(path)}.index).')
  candidates = [path] if path else [p for _, p in checkpoints_newest_first(directory)]
  failures = []
  for candidate in candidates:
    try:
      status = make_checkpoint().restore(candidate)
      if partial:
        status.expect_partial()
      status.assert_existing_objects_matched()
    except RESTORE_ERRORS as e:
      failures.append((candidate, restore_failure(e)))
      continue
    return candidate, failures
  if not failures:
    return None, []
  listed = '; '.join(f'{os.path.basename(p)} is {why}' for p, why in failures)
  advice = ('restore an intact copy of the run, or start afresh in another --model_dir' if
            all(why.startswith('corrupt') for _, why in failures) else
            'use another --model_dir, or delete its checkpoints to start afresh')
  raise CheckpointError(f'No checkpoint in {directory} restores: {listed}; {advice}.')


def log_fallback(restored: str, failures: Sequence[Tuple[str, str]], note: str = '') -> None:
  """One warning line: which checkpoint is used instead of which newer ones, and why."""
  if failures:
    skipped = '; '.join(f'{os.path.basename(p)} is {why}' for p, why in failures)
    logging.warning('Using %s: %s%s.', os.path.basename(restored), skipped, note)


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
    self.max_to_keep = max_to_keep
    self._checkpoint = self._new_checkpoint()
    self._manager = tf.train.CheckpointManager(self._checkpoint, directory,
                                               max_to_keep=max_to_keep)

  def _new_checkpoint(self) -> tf.train.Checkpoint:
    rng = random_state(self.classifier)
    return tf.train.Checkpoint(model=self.classifier, optimizer=self.optimizer,
                               **({'rng': rng} if rng else {}))

  @property
  def latest(self) -> Optional[str]:
    return self._manager.latest_checkpoint

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  def restore(self) -> int:
    """Restores the newest checkpoint that restores; returns the global step (0: none).

    Newer checkpoints that do not restore (corrupt, or written by another model) are skipped
    with one warning line. When this checkpointer writes where it restores from (a training run's
    chief), they are moved into `<directory>/corrupt/<time>/`, never deleted, and the
    `checkpoint` index is rewritten without them, so that rotation does not delete them and the
    save at their step does not overwrite them.

    Raises:
      CheckpointError: there are checkpoints and none of them restores.
    """
    path, failures = restore_newest(self._new_checkpoint, self.restore_directory)
    if path is None:
      return 0
    if failures and self.restore_directory == self.directory:
      aside = self._set_aside([p for p, _ in failures], keep=path)
      log_fallback(path, failures, f'; moved to {aside}')
    else:
      log_fallback(path, failures)
    logging.info('Restored %s (step %d).', path, self.step)
    return self.step

  def _set_aside(self, paths: Sequence[str], keep: str) -> str:
    """Moves the files of checkpoints `paths` into corrupt/<time>/; `keep` becomes the latest."""
    aside = os.path.join(self.directory, 'corrupt', time.strftime('%Y%m%d-%H%M%S'))
    tf.io.gfile.makedirs(aside)
    for prefix in paths:
      for name in tf.io.gfile.glob(prefix + '.*'):
        tf.io.gfile.rename(name, os.path.join(aside, os.path.basename(name)), overwrite=True)
    kept_step = int(keep.rsplit('-', 1)[-1])
    remaining = sorted((s, p) for s, p in checkpoints_newest_first(self.directory)
                       if s <= kept_step)[-self.max_to_keep:]
    # With their times, so that the new manager rotates them (without, it would keep them all).
    times = [tf.io.gfile.stat(p + '.index').mtime_nsec / 1e9 for _, p in remaining]
    tf.compat.v1.train.update_checkpoint_state(
        self.directory, keep, all_model_checkpoint_paths=[p for _, p in remaining],
        all_model_checkpoint_timestamps=times, last_preserved_timestamp=min(times) - 1.0)
    self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory,
                                               max_to_keep=self.max_to_keep)
    return aside

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
  """Checks that `directory` can be created and written, creating and leaving nothing.

  A missing local directory is checked through its nearest existing parent (a directory that
  this process may write into); an existing one by writing and removing a probe file. Paths on
  other file systems (`gs://...`) are created and probed.

  Raises:
    CheckpointError: a path component is a file, or the directory is not writable (read-only,
      permission denied, full disk).
  """
  if '://' in directory:
    _probe(directory, create=True)
    return
  path = os.path.abspath(directory)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise CheckpointError(f'Directory {directory} is not writable: {existing} is a file, not a '
                          f'directory.')
  if existing == path:
    _probe(path, create=False)
  elif not os.access(existing, os.W_OK | os.X_OK):
    raise CheckpointError(f'Directory {directory} is not writable: cannot create it in '
                          f'{existing} (permission denied or read-only).')


def _probe(directory: str, create: bool) -> None:
  try:
    if create:
      tf.io.gfile.makedirs(directory)
    probe = os.path.join(directory, '.write_probe')
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('ok')
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as e:
    reason = 'the disk is full' if getattr(e, 'errno', None) == errno.ENOSPC else short_error(e)
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
