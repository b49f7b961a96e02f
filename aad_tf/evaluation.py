"""Robust accuracy of a classifier under a set of attacks, batched and compiled.

    attacks = standard_attacks(['clean', 'fgsm', 'pgd20'], eps=0.3)
    report = evaluate(classifier, eval_dataset, attacks)
    print(format_table(report))

An attack here is `fn(model_fn, x, y) -> x_adv`; each is wrapped in one `tf.function` with a fixed
input signature, so it traces once for the whole test set. `worst_case` counts an example as
robust only if it survives every attack that was run (per-example worst case).

Step sizes: PGD-k and CW-k use 2.5 * eps / k (Madry et al.'s rule, enough to cross the ball and
come back), one random start; FGSM uses eps.
"""

import dataclasses
import re
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf import attacks as attacks_lib

AttackFn = Callable[[attacks_lib.ModelFn, tf.Tensor, tf.Tensor], tf.Tensor]

DEFAULT_EPS = {'mnist': 0.3, 'cifar10': 8 / 255, 'imagenet': 16 / 255, 'boxed_mnist': 0.3}


def pgd_step_size(eps: float, num_steps: int) -> float:
  """Madry et al.'s step size for k-step PGD: 2.5 * eps / k."""
  return 2.5 * eps / max(int(num_steps), 1)


def standard_attacks(names: Sequence[str], *, eps: float, seed: int = 0
                     ) -> Dict[str, Optional[AttackFn]]:
  """The paper-grid attacks by name: clean, fgsm, stepll, pgd<k>, cw<k>, iter_stepll<k>.

  Returns:
    name -> attack fn (None for 'clean').
  """
  attacks_lib.check_eps(eps)
  table = {}
  for name in names:
    match = re.fullmatch(r'(pgd|cw|iter_stepll)(\d+)', name)
    if name == 'clean':
      table[name] = None
    elif name == 'fgsm':
      table[name] = lambda f, x, y: attacks_lib.fgsm(f, x, y, eps=eps)
    elif name == 'stepll':
      table[name] = lambda f, x, y: attacks_lib.stepll(f, x, y, eps=eps)
    elif match:
      kind, k = match.group(1), int(match.group(2))
      table[name] = _iterative_attack(kind, k, eps, seed)
    else:
      raise ValueError(f'Unknown attack {name!r}; expected clean, fgsm, stepll, pgd<k>, cw<k> '
                       f'or iter_stepll<k>.')
  return table


def _iterative_attack(kind: str, k: int, eps: float, seed: int) -> AttackFn:
  step = pgd_step_size(eps, k)
  if kind == 'iter_stepll':
    return lambda f, x, y: attacks_lib.iter_stepll(f, x, y, eps=eps, step_size=eps / k,
                                                   num_steps=k)
  loss = 'ce' if kind == 'pgd' else 'cw'
  return lambda f, x, y: attacks_lib.pgd(f, x, y, eps=eps, step_size=step, num_steps=k,
                                         loss=loss, random_init=True)


@dataclasses.dataclass
class Report:
  """Per-attack accuracy (fractions), per-example worst case, and timing."""
  num_examples: int
  accuracy: Dict[str, float]
  seconds: Dict[str, float]
  correct: Dict[str, np.ndarray]

  @property
  def worst_case(self) -> float:
    attacked = [v for k, v in self.correct.items()]
    if not attacked:
      return float('nan')
    return float(np.mean(np.logical_and.reduce(attacked)))

  def to_json(self) -> Dict[str, object]:
    return {'num_examples': self.num_examples,
            'accuracy': {**self.accuracy, 'worst_case': self.worst_case},
            'seconds': self.seconds}


def compile_attack(classifier: keras.Model, attack: Optional[AttackFn], image_shape
                   ) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """A tf.function (x, y) -> bool [B] 'still correctly classified' under `attack`."""
  model_fn = lambda images: classifier(images, training=False)
  spec = (tf.TensorSpec([None, *image_shape], tf.float32), tf.TensorSpec([None], tf.int32))

  @tf.function(input_signature=spec)
  def correct(x, y):
    x_eval = x if attack is None else attack(model_fn, x, y)
    pred = tf.argmax(model_fn(x_eval), axis=-1, output_type=tf.int32)
    return tf.equal(pred, y)

  return correct


def evaluate(classifier: keras.Model, dataset: tf.data.Dataset,
             attacks: Mapping[str, Optional[AttackFn]], progress: bool = True) -> Report:
  """Accuracy of `classifier` on `dataset` (x, y batches) under each attack."""
  image_shape = tuple(dataset.element_spec[0].shape[1:])
  accuracy, seconds, correct_by = {}, {}, {}
  for name, attack in attacks.items():
    fn = compile_attack(classifier, attack, image_shape)
    started = time.time()
    chunks: List[np.ndarray] = []
    bar = keras.utils.Progbar(None, unit_name='batch', verbose=1 if progress else 0)
    for x, y in dataset:
      chunks.append(fn(tf.cast(x, tf.float32), tf.cast(y, tf.int32)).numpy())
      bar.add(1)
    correct = np.concatenate(chunks) if chunks else np.zeros([0], bool)
    correct_by[name] = correct
    accuracy[name] = float(correct.mean()) if correct.size else float('nan')
    seconds[name] = time.time() - started
    logging.info('%-12s accuracy %.4f (%d examples, %.1f s)', name, accuracy[name],
                 correct.size, seconds[name])
  num = len(next(iter(correct_by.values()))) if correct_by else 0
  return Report(num, accuracy, seconds, correct_by)


def format_table(report: Report, row_name: str = 'model') -> str:
  """A Markdown table, accuracies in percent, in the order the attacks were run."""
  names = list(report.accuracy) + ['worst_case']
  values = {**report.accuracy, 'worst_case': report.worst_case}
  header = '| | ' + ' | '.join(names) + ' |'
  rule = '|---|' + '---|' * len(names)
  row = f'| {row_name} | ' + ' | '.join(f'{100 * values[n]:.2f}' for n in names) + ' |'
  return '\n'.join([header, rule, row])
