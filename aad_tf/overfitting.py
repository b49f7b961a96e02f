"""Catastrophic-overfitting guard for single-step adversarial training.

Single-step training (StepLL, FGSM, ensemble) can overfit catastrophically: within a few hundred
steps the model learns to defeat the one-step attack it trains on, so FGSM accuracy jumps while PGD
accuracy collapses to near zero (Wong et al. 2020, "Fast is better than free", Sec. 5; Tramer et
al. 2018's gradient masking). `OverfitGuard` watches for exactly that signature on a fixed
held-out set:

    at the end of every epoch (and every `every_steps` steps if set):
      fgsm, pgd = accuracy under FGSM and PGD-k at eps on the held-out examples
      healthy   = the earlier check with the best PGD accuracy
      collapse  = pgd <= healthy.pgd - min_pgd_drop  and  fgsm > healthy.fgsm

and then warns ('warn'), stops training ('stop'), or restores the newest checkpoint at or before
the healthy check and stops ('rollback'), so that what gets exported is the pre-collapse model.
"""

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf import evaluation

MODES = ('off', 'warn', 'stop', 'rollback')


@dataclasses.dataclass(frozen=True)
class Check:
  """One evaluation of the guard: the optimizer step and the held-out accuracies (fractions)."""
  step: int
  fgsm_acc: float
  pgd_acc: float


def is_collapse(healthy: Check, current: Check, *, min_pgd_drop: float) -> bool:
  """Whether `current` shows catastrophic overfitting relative to the `healthy` check."""
  return (healthy.pgd_acc - current.pgd_acc >= min_pgd_drop and
          current.fgsm_acc > healthy.fgsm_acc)


def checkpoint_at_or_before(directory: str, step: int) -> Optional[Tuple[int, str]]:
  """The newest kept checkpoint `<directory>/ckpt-<s>` with s <= step, as (s, path), or None."""
  state = tf.train.get_checkpoint_state(directory)
  if state is None:
    return None
  kept = []
  for path in state.all_model_checkpoint_paths:
    suffix = path.rsplit('-', 1)[-1]
    if suffix.isdigit() and int(suffix) <= step:
      kept.append((int(suffix), path))
  return max(kept) if kept else None


class OverfitGuard(keras.callbacks.Callback):
  """Evaluates FGSM and PGD accuracy on held-out examples and acts on a collapse.

  Works with an `AADModel` (its `.classifier` is evaluated) or any Keras classifier returning
  logits.

  Args:
    x: held-out images [N, H, W, C] in [0, 1] (fixed for the whole run).
    y: their int labels [N].
    eps: L-inf radius of both attacks.
    mode: 'warn', 'stop' or 'rollback'.
    pgd_steps: PGD steps (step size 2.5 * eps / pgd_steps, one random start).
    min_pgd_drop: the PGD accuracy drop (a fraction) below the healthy check that counts as a
      collapse (Wong et al. stop on a 0.2 drop).
    every_steps: also check every this many optimizer steps (0: only at epoch ends).
    batch_size: evaluation batch size.
    checkpoint_dir: the run's checkpoint directory; required for 'rollback'.
  """

  def __init__(self, x: np.ndarray, y: np.ndarray, *, eps: float, mode: str = 'warn',
               pgd_steps: int = 10, min_pgd_drop: float = 0.2, every_steps: int = 0,
               batch_size: int = 500, checkpoint_dir: Optional[str] = None):
    super().__init__()
    if mode not in MODES[1:]:
      raise ValueError(f'mode must be one of {MODES[1:]}, got {mode!r}.')
    if len(x) == 0 or len(x) != len(y):
      raise ValueError(f'x and y must be non-empty and of equal length, got {len(x)} and '
                       f'{len(y)}.')
    if not 0.0 <= min_pgd_drop <= 1.0:
      raise ValueError(f'min_pgd_drop must be in [0, 1], got {min_pgd_drop}.')
    for name, value in (('pgd_steps', pgd_steps), ('batch_size', batch_size)):
      if int(value) < 1:
        raise ValueError(f'{name} must be >= 1, got {value}.')
    if int(every_steps) < 0:
      raise ValueError(f'every_steps must be >= 0, got {every_steps}.')
    if mode == 'rollback' and not checkpoint_dir:
      raise ValueError("mode 'rollback' needs checkpoint_dir.")
    self.x = np.asarray(x, np.float32)
    self.y = np.asarray(y, np.int32)
    self.eps = float(eps)
    self.mode = mode
    self.min_pgd_drop = float(min_pgd_drop)
    self.every_steps = int(every_steps)
    self.batch_size = int(batch_size)
    self.checkpoint_dir = checkpoint_dir
    self._attacks = evaluation.standard_attacks(['fgsm', f'pgd{int(pgd_steps)}'], eps=eps)
    self._compiled: Dict[str, object] = {}
    self._compiled_for = None
    self.checks: List[Check] = []
    self.collapses: List[Check] = []
    self.healthy: Optional[Check] = None
    self.rolled_back_to: Optional[int] = None

  @property
  def fired(self) -> bool:
    return bool(self.collapses)

  def _classifier(self) -> keras.Model:
    return getattr(self.model, 'classifier', self.model)

  def _step(self) -> int:
    return int(self.model.optimizer.iterations.numpy())

  def measure(self) -> Tuple[float, float]:
    """(FGSM accuracy, PGD accuracy) of the current weights on the held-out examples."""
    classifier = self._classifier()
    if self._compiled_for is not classifier:
      self._compiled = {name: evaluation.compile_attack(classifier, fn, self.x.shape[1:])
                        for name, fn in self._attacks.items()}
      self._compiled_for = classifier
    accuracy = []
    for fn in self._compiled.values():
      correct = [fn(tf.constant(self.x[i:i + self.batch_size]),
                    tf.constant(self.y[i:i + self.batch_size])).numpy()
                 for i in range(0, len(self.x), self.batch_size)]
      accuracy.append(float(np.concatenate(correct).mean()))
    return accuracy[0], accuracy[1]

  def check(self) -> bool:
    """Measures the current weights and acts on a collapse; returns whether one was found."""
    step = self._step()
    if self.checks and self.checks[-1].step == step:
      return False
    fgsm_acc, pgd_acc = self.measure()
    return self.record(Check(step, fgsm_acc, pgd_acc))

  def record(self, check: Check) -> bool:
    """Adds one measurement, compares it with the healthy check and acts; True on a collapse."""
    self.checks.append(check)
    logging.info('Overfitting guard at step %d: FGSM acc %.4f, PGD acc %.4f.', check.step,
                 check.fgsm_acc, check.pgd_acc)
    if self.healthy is None or check.pgd_acc >= self.healthy.pgd_acc:
      self.healthy = check
      return False
    if not is_collapse(self.healthy, check, min_pgd_drop=self.min_pgd_drop):
      return False
    self.collapses.append(check)
    logging.warning(
        'Catastrophic overfitting at step %d: PGD accuracy fell from %.4f (step %d) to %.4f '
        'while FGSM accuracy rose from %.4f to %.4f. Mode %r.', check.step,
        self.healthy.pgd_acc, self.healthy.step, check.pgd_acc, self.healthy.fgsm_acc,
        check.fgsm_acc, self.mode)
    if self.mode == 'rollback':
      self._rollback(self.healthy.step)
    if self.mode in ('stop', 'rollback'):
      self.model.stop_training = True
    return True

  def _rollback(self, step: int) -> None:
    found = checkpoint_at_or_before(self.checkpoint_dir, step)
    if found is None:
      logging.warning('No kept checkpoint at or before step %d in %s; stopping without '
                      'rollback (check more often than checkpoints rotate out).', step,
                      self.checkpoint_dir)
      return
    ckpt_step, path = found
    checkpoint = tf.train.Checkpoint(model=self._classifier(), optimizer=self.model.optimizer)
    checkpoint.restore(path).assert_existing_objects_matched()
    self.rolled_back_to = ckpt_step
    logging.warning('Rolled back to %s (step %d).', path, ckpt_step)

  def on_train_batch_end(self, batch, logs=None):
    if self.every_steps and self._step() % self.every_steps == 0:
      self.check()

  def on_epoch_end(self, epoch, logs=None):
    if not self.model.stop_training:
      self.check()

  def summary(self) -> Dict[str, object]:
    """What the guard saw, for eval.json."""
    return {'mode': self.mode, 'fired': self.fired,
            'collapse_steps': [c.step for c in self.collapses],
            'rolled_back_to': self.rolled_back_to,
            'checks': [dataclasses.asdict(c) for c in self.checks]}


def held_out(x: np.ndarray, y: np.ndarray, num_examples: int) -> Tuple[np.ndarray, np.ndarray]:
  """The last `num_examples` examples of a split (disjoint from a leading evaluation slice)."""
  if not 0 < num_examples <= len(x):
    raise ValueError(f'num_examples must be in [1, {len(x)}], got {num_examples}.')
  return x[-num_examples:], y[-num_examples:]


def make_guard(config, arrays, *, mode: str, num_examples: int, every_steps: int, pgd_steps: int,
               min_pgd_drop: float, batch_size: int, eval_examples: Optional[int]
               ) -> Optional['OverfitGuard']:
  """The catastrophic-overfitting guard on the last `num_examples` test images (None when off).

  Args:
    config: the run, a training.TrainConfig (its eval_eps is the guard's eps).
    arrays: its in-memory data.Arrays.
    mode: MODES ('off': no guard).
    num_examples, every_steps, pgd_steps, min_pgd_drop, batch_size: see OverfitGuard.
    eval_examples: the closing evaluation's first test examples (None: all), to warn when the
      guard's images overlap them.
  """
  if mode == 'off':
    return None
  x_test, y_test = arrays.split('test')
  x, y = held_out(x_test, y_test, min(num_examples, len(x_test)))
  if (eval_examples or len(x_test)) + len(x) > len(x_test):
    logging.warning('The guard\'s held-out examples overlap the closing evaluation\'s.')
  return OverfitGuard(
      x, y, eps=config.eval_eps, mode=mode, pgd_steps=pgd_steps, min_pgd_drop=min_pgd_drop,
      every_steps=every_steps, batch_size=batch_size,
      checkpoint_dir=os.path.join(config.model_dir, 'checkpoints'))
