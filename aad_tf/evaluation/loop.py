"""Running attacks: each compiled once, over a dataset, into a `Report` of robust accuracy.

    report = evaluate(classifier, eval_dataset, attacks, gradcam_layer='gradcam')

Each attack is wrapped in one `tf.function` with a fixed input signature (images, labels, seed),
so it traces once for the whole test set; random starts are stateless functions of
(seed, attack name, batch index), so a report is reproducible. `worst_case` counts an example as
robust only if it is classified correctly under every attack that was run (clean included).
"""

import dataclasses
import time
import zlib
from typing import Any, Callable, Mapping

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf.evaluation.suite import Attack
from aad_tf.evaluation.suite import Target
from aad_tf.evaluation.suite import WORST_CASE
from aad_tf.evaluation.suite import as_target


def attack_seed(seed: int, name: str, batch_index: int) -> tf.Tensor:
  """The stateless seed [2] of one attack on one batch (independent of the attack order)."""
  return tf.constant([int(seed) % 2**31, (zlib.crc32(name.encode()) + 7919 * batch_index)
                      % 2**31], tf.int32)


def _as_attack(name: str, attack) -> Attack:
  """Accepts an Attack, None (clean) or a legacy fn(model_fn, x, y) -> x_adv."""
  if isinstance(attack, Attack):
    return attack
  if attack is None:
    return Attack(name, None)
  if callable(attack):
    return Attack(name, lambda t, x, y, seed: attack(t.model_fn, x, y))
  raise ValueError(f'Attack {name!r} must be an evaluation.Attack, a callable or None.')


def compile_attack(model: Target | keras.Model, attack, image_shape,
                   gradcam_layer: str | None = None) -> Callable[..., tf.Tensor]:
  """A compiled (x, y, seed=(0, 0)) -> bool [B] 'still correctly classified' under `attack`.

  One `tf.function` (the returned callable's `tf_function`) with input signature
  (float32 [None, *image_shape], int32 [None], int32 [2]): it traces once whatever the batch size.
  """
  target = as_target(model, gradcam_layer)
  attack = _as_attack(getattr(attack, 'name', 'attack'), attack)
  if attack.needs_features and target.feature_fn is None:
    raise ValueError(f'Attack {attack.name!r} needs Grad-CAM features: pass a Keras classifier '
                     f'and its gradcam_layer.')
  spec = (tf.TensorSpec([None, *image_shape], tf.float32), tf.TensorSpec([None], tf.int32),
          tf.TensorSpec([2], tf.int32))

  @tf.function(input_signature=spec)
  def correct(x, y, seed):
    x_eval = x if attack.run is None else attack.run(target, x, y, seed)
    pred = tf.argmax(target.model_fn(x_eval), axis=-1, output_type=tf.int32)
    return tf.equal(pred, y)

  def call(x, y, seed=(0, 0)):
    return correct(tf.cast(x, tf.float32), tf.cast(y, tf.int32),
                   tf.cast(tf.convert_to_tensor(seed), tf.int32))

  call.tf_function = correct  # e.g. to count traces
  return call


@dataclasses.dataclass
class Report:
  """Per-attack accuracy (fractions), per-example worst case, timing, skips and diagnostics.

  Attributes:
    num_examples: examples evaluated.
    accuracy: attack name -> accuracy in [0, 1], in the order the attacks ran.
    seconds: attack name -> wall time.
    correct: attack name -> bool [num_examples], correctly classified under that attack.
    skipped: attack name -> why it was not run.
    params: attack name -> its hyperparameters.
    diagnostics: gradient-masking checks (`evaluation.diagnostics.Diagnostic.to_json()` dicts).
  """
  num_examples: int
  accuracy: dict[str, float]
  seconds: dict[str, float]
  correct: dict[str, np.ndarray]
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)
  params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  diagnostics: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  @property
  def worst_case_correct(self) -> np.ndarray:
    """bool [num_examples]: correct under every attack that was run."""
    if not self.correct:
      return np.zeros([0], bool)
    return np.logical_and.reduce(list(self.correct.values()))

  @property
  def worst_case(self) -> float:
    if not self.correct or not self.num_examples:
      return float('nan')
    return float(np.mean(self.worst_case_correct))

  @property
  def diagnostics_fired(self) -> list[str]:
    return [d['name'] for d in self.diagnostics if d.get('fired')]

  def to_json(self) -> dict[str, object]:
    return {'num_examples': self.num_examples,
            'accuracy': {**self.accuracy, WORST_CASE: self.worst_case},
            'seconds': self.seconds, 'skipped': self.skipped, 'attacks': self.params,
            'diagnostics': self.diagnostics,
            'gradient_masking_suspected': bool(self.diagnostics_fired)}


def evaluate(model: Target | keras.Model, dataset: tf.data.Dataset,
             attacks: Mapping[str, Any], progress: bool = True, *,
             gradcam_layer: str | None = None, seed: int = 0,
             first_batch: int = 0) -> Report:
  """Accuracy of `model` on `dataset` ((x, y) batches) under each attack.

  Args:
    model: a Keras classifier (logits) or a `Target`.
    dataset: batches of images [B, H, W, C] in [0, 1] and int labels [B].
    attacks: name -> Attack (or None for clean, or a legacy fn(model_fn, x, y)).
    progress: show a progress bar per attack.
    gradcam_layer: with a Keras classifier, its Grad-CAM layer (enables A^3 and adaptive).
    seed: base seed of the random starts (mixed with the attack name and batch index).
    first_batch: the index of the dataset's first batch within a larger evaluation: a set
      evaluated in pieces (examples [0, n), then [n, 2n) with first_batch = n / B) gets the
      random starts of one evaluation of the whole.

  Returns:
    The Report; attacks that need Grad-CAM features the model cannot give are in `skipped`.
  """
  target = as_target(model, gradcam_layer)
  image_shape = tuple(dataset.element_spec[0].shape[1:])
  num_batches = int(dataset.cardinality())
  report = Report(0, {}, {}, {})
  for name, attack in attacks.items():
    attack = _as_attack(name, attack)
    if attack.needs_features and target.feature_fn is None:
      report.skipped[name] = ('needs the Grad-CAM features of the model (its Keras classifier '
                              'and Grad-CAM layer); a SavedModel gives logits only')
      logging.warning('Skipping %s: %s.', name, report.skipped[name])
      continue
    fn = compile_attack(target, attack, image_shape)
    started = time.time()
    chunks: list[np.ndarray] = []
    bar = keras.utils.Progbar(num_batches if num_batches > 0 else None, unit_name='batch',
                              verbose=1 if progress else 0)
    logging.info('Running %s (%s).', name, attack.params or 'no attack')
    for index, (x, y) in enumerate(dataset):
      chunks.append(fn(x, y, attack_seed(seed, name, first_batch + index)).numpy())
      bar.add(1, values=[('acc', float(np.concatenate(chunks).mean()))])
    correct = np.concatenate(chunks) if chunks else np.zeros([0], bool)
    report.correct[name] = correct
    report.accuracy[name] = float(correct.mean()) if correct.size else float('nan')
    report.seconds[name] = time.time() - started
    report.params[name] = dict(attack.params)
    report.num_examples = int(correct.size)
    logging.info('%-14s accuracy %.4f (%d examples, %.1f s)', name, report.accuracy[name],
                 correct.size, report.seconds[name])
  return report
