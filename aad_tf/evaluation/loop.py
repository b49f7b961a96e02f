"""Running attacks: each compiled once, over a dataset, into a `Report` of robust accuracy.

    report = evaluate(classifier, eval_dataset, attacks, gradcam_layer='gradcam')

Each attack is wrapped in one `tf.function` with a fixed input signature (images, labels, seed),
so it traces once for the whole test set; random starts are stateless functions of
(seed, attack name, batch index), so a report is reproducible. `worst_case` counts an example as
robust only if it is classified correctly under every attack that was run (clean included).

Which examples an attack fooled: the model's prediction on the attack's images, on the
evaluation batch, and, for an attack that reports its own per-example verdict (APGD, FAB,
Square: misclassified by model_fn at the point returned, as the attack evaluated it), that
verdict too: an example is correct only if both say so. Both are model_fn's own verdicts on a
point inside the ball, so the count is never above either alone; a re-prediction at another
batch size, which can flip a point that sits on the boundary (APGD returns its first
misclassified iterate), no longer undoes what the attack found (issue 26). AutoAttack reports
the flags after each of its stages (`Report.stages`), and its result is exactly
`autoattack_stages(...)[1]['square']` on the same batch with the same seed
(`attack_seed(seed, 'autoattack', batch_index)`).
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


def _verdicts(output, target: Target, y) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """(correct bool [B], stages) from what an attack's run returned (see `suite.RunFn`)."""
  x_adv, own = output if isinstance(output, tuple) else (output, None)
  correct = tf.equal(tf.argmax(target.model_fn(x_adv), axis=-1, output_type=tf.int32), y)
  if isinstance(own, dict):  # correct after each stage; the last is the attack's outcome
    return tf.logical_and(correct, list(own.values())[-1]), dict(own)
  if own is not None:  # the examples the attack itself found misclassified
    correct = tf.logical_and(correct, tf.logical_not(own))
  return correct, {}


def compile_attack(model: Target | keras.Model, attack, image_shape,
                   gradcam_layer: str | None = None) -> Callable[..., tf.Tensor]:
  """A compiled (x, y, seed=(0, 0)) -> bool [B] 'still correctly classified' under `attack`.

  One `tf.function` (the returned callable's `tf_function`) with input signature
  (float32 [None, *image_shape], int32 [None], int32 [2]): it traces once whatever the batch size.
  It returns (correct [B], stages: stage name -> bool [B], empty unless the attack runs in
  stages); the callable returns `correct` (module docstring), its `with_stages` both (NumPy,
  the stages in the attack's order).
  """
  target = as_target(model, gradcam_layer)
  attack = _as_attack(getattr(attack, 'name', 'attack'), attack)
  if attack.needs_features and target.feature_fn is None:
    raise ValueError(f'Attack {attack.name!r} needs Grad-CAM features: pass a Keras classifier '
                     f'and its gradcam_layer.')
  spec = (tf.TensorSpec([None, *image_shape], tf.float32), tf.TensorSpec([None], tf.int32),
          tf.TensorSpec([2], tf.int32))

  stage_order: list[str] = []  # a tf.function returns a dict with its keys sorted

  @tf.function(input_signature=spec)
  def correct(x, y, seed):
    flags, stages = _verdicts(x if attack.run is None else attack.run(target, x, y, seed),
                              target, y)
    stage_order[:] = list(stages)
    return flags, stages

  def run(x, y, seed):
    return correct(tf.cast(x, tf.float32), tf.cast(y, tf.int32),
                   tf.cast(tf.convert_to_tensor(seed), tf.int32))

  def with_stages(x, y, seed=(0, 0)):
    flags, stages = run(x, y, seed)
    return flags.numpy(), {name: stages[name].numpy() for name in stage_order}

  def call(x, y, seed=(0, 0)):
    return run(x, y, seed)[0]

  call.with_stages = with_stages
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
    stages: attack name -> stage name -> bool [num_examples], correct after that stage, for
      attacks run in stages (AutoAttack: 'clean', 'apgd_ce', 'apgd_t', 'fab_t', 'square').
  """
  num_examples: int
  accuracy: dict[str, float]
  seconds: dict[str, float]
  correct: dict[str, np.ndarray]
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)
  params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  diagnostics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  stages: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

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

  @property
  def stage_accuracy(self) -> dict[str, dict[str, float]]:
    """attack name -> stage name -> accuracy after that stage (attacks run in stages)."""
    return {name: {stage: float(v.mean()) if v.size else float('nan')
                   for stage, v in stages.items()} for name, stages in self.stages.items()}

  def to_json(self) -> dict[str, object]:
    """The report as robustness.json holds it.

    'correct' holds the per-example flags as bit strings (`to_bits`): character i is '1' if
    example i of the evaluation (test example first_example + i) is classified correctly under
    that attack (for worst_case: under every attack). 'stages' holds, per attack run in stages,
    the accuracy after each stage and the same bit strings per stage. Two evaluations compare
    example by example with `from_bits`.
    """
    return {'num_examples': self.num_examples,
            'accuracy': {**self.accuracy, WORST_CASE: self.worst_case},
            'seconds': self.seconds, 'skipped': self.skipped, 'attacks': self.params,
            'stages': {name: {'accuracy': self.stage_accuracy[name],
                              'correct': {stage: to_bits(v) for stage, v in stages.items()}}
                       for name, stages in self.stages.items()},
            'correct': {**{name: to_bits(v) for name, v in self.correct.items()},
                        WORST_CASE: to_bits(self.worst_case_correct)},
            'diagnostics': self.diagnostics,
            'gradient_masking_suspected': bool(self.diagnostics_fired)}


def to_bits(flags) -> str:
  """bool [N] -> 'N characters, '1' where True' (robustness.json's per-example flags)."""
  return ''.join('1' if flag else '0' for flag in np.asarray(flags, bool))


def from_bits(bits: str) -> np.ndarray:
  """The inverse of `to_bits`: bool [N]."""
  if set(bits) - {'0', '1'}:
    raise ValueError('Per-example flags are a string of 0 and 1.')
  return np.frombuffer(bits.encode(), np.uint8) == ord('1')


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
    stage_chunks: dict[str, list[np.ndarray]] = {}
    bar = keras.utils.Progbar(num_batches if num_batches > 0 else None, unit_name='batch',
                              verbose=1 if progress else 0)
    logging.info('Running %s (%s).', name, attack.params or 'no attack')
    for index, (x, y) in enumerate(dataset):
      flags, stages = fn.with_stages(x, y, attack_seed(seed, name, first_batch + index))
      chunks.append(flags)
      for stage, stage_flags in stages.items():
        stage_chunks.setdefault(stage, []).append(stage_flags)
      bar.add(1, values=[('acc', float(np.concatenate(chunks).mean()))])
    correct = np.concatenate(chunks) if chunks else np.zeros([0], bool)
    report.correct[name] = correct
    if stage_chunks:
      report.stages[name] = {stage: np.concatenate(v) for stage, v in stage_chunks.items()}
      logging.info('%s after each stage: %s', name, ', '.join(
          f'{stage} {v:.4f}' for stage, v in report.stage_accuracy[name].items()))
    report.accuracy[name] = float(correct.mean()) if correct.size else float('nan')
    report.seconds[name] = time.time() - started
    report.params[name] = dict(attack.params)
    report.num_examples = int(correct.size)
    logging.info('%-14s accuracy %.4f (%d examples, %.1f s)', name, report.accuracy[name],
                 correct.size, report.seconds[name])
  return report
