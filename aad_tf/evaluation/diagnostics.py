"""Gradient-masking diagnostics: checks that make a falsely robust model visible.

A defense that flattens, saturates or breaks the input gradient makes gradient attacks fail
without making the model robust (Athalye, Carlini & Wagner 2018; Carlini et al. 2019, "On
evaluating adversarial robustness", Sec. 5). Each check below is a symptom that cannot occur when
the gradient is informative, and fires when its statistic crosses a documented threshold:

  gradient_free_beats_gradient
      Examples broken by the gradient-free Square Attack but by no gradient attack, as a
      fraction of all examples. With informative gradients, white-box attacks with 100+ steps
      find what a black-box random search finds. Fires above 1 % (and at least 3 examples,
      so a few lucky queries on a tiny test set do not fire it).
  single_step_beats_iterative
      Examples broken by a single-step attack (FGSM, StepLL) but by no iterative gradient
      attack. Iterative attacks contain the single step; beating them means the gradient at x
      is informative but does not stay so along the path. Same threshold.
  eps_sweep_not_zero
      Accuracy under PGD (from x, no random start, so that only the gradient moves the input)
      at growing eps up to 1, where every image is reachable: it must reach ~0. Fires if the
      accuracy at the largest eps exceeds 1 %, or rises by more than 2 points as eps grows.
  pgd_loss_not_increasing
      PGD ascends cross-entropy from x; along the path we record each example's CW margin
      max_{j != y} z_j - z_y (the margin cannot saturate in float32 as cross-entropy can).
      A signed-gradient step is a first-order ascent step, so the margin must rise for almost
      every example. Fires if more than 5 % of examples never raise it by 1e-3 logits.
  zero_gradients
      Examples whose cross-entropy input gradient is exactly zero, at x or at a random point of
      the eps ball. A ReLU/softmax network has a zero gradient only where every path is dead or
      the softmax underflows. Fires above 1 %.

Every function takes `model_fn` (x -> logits) or a finished `evaluation.Report`, so the checks
work on SavedModels too.
"""

import dataclasses
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf import attacks as attacks_lib

# Thresholds (see the module docstring for why).
ONLY_BROKEN_TOLERANCE = 0.01
ONLY_BROKEN_MIN_EXAMPLES = 3
SWEEP_FINAL_TOLERANCE = 0.01
SWEEP_RISE_TOLERANCE = 0.02
LOSS_FLAT_TOLERANCE = 0.05
LOSS_MIN_RISE = 1e-3
ZERO_GRADIENT_TOLERANCE = 0.01

GRADIENT_FREE = ('square',)
# Ensembles holding a gradient-free attack (AutoAttack runs Square last): counting them among
# the gradient attacks would hide exactly the examples that only Square breaks.
MIXED = ('autoattack',)
SINGLE_STEP = ('fgsm', 'stepll', 'stepll_a3')


@dataclasses.dataclass
class Diagnostic:
  """One check.

  Attributes:
    name: the check's name.
    fired: whether the symptom of gradient masking was found.
    value: the statistic compared with the threshold (None when the check could not run).
    threshold: fires when value > threshold.
    message: what the check measures and what firing means.
    details: supporting numbers (curves, counts).
  """
  name: str
  fired: bool
  value: float | None
  threshold: float
  message: str
  details: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _not_run(name: str, threshold: float, why: str) -> Diagnostic:
  return Diagnostic(name, False, None, threshold, f'not run: {why}')


def only_broken_by(correct: dict[str, np.ndarray], group: Sequence[str],
                   others: Sequence[str]) -> np.ndarray:
  """bool [N]: correct clean (if known) and under every `others` attack, broken by a `group` one."""
  n = len(next(iter(correct.values())))
  survives_others = np.ones([n], bool)
  for name in others:
    survives_others &= correct[name]
  if 'clean' in correct:
    survives_others &= correct['clean']
  broken_by_group = np.zeros([n], bool)
  for name in group:
    broken_by_group |= ~correct[name]
  return survives_others & broken_by_group


def _only_broken_check(name, correct, group, others, what, kind, tolerance, min_examples):
  if not group or not others:
    return _not_run(name, tolerance, f'needs {what} and {kind} attacks in the report')
  only = only_broken_by(correct, group, others)
  count, n = int(only.sum()), len(only)
  fraction = count / max(n, 1)
  fired = fraction > tolerance and count >= min_examples
  return Diagnostic(
      name, fired, fraction, tolerance,
      f'fraction of examples broken by {"/".join(group)} but by none of the '
      f'{len(others)} {kind} attacks (listed in details); above the threshold the gradients are '
      f'suspect',
      {'count': count, 'num_examples': n, 'group': list(group), 'others': list(others),
       'min_examples': min_examples})


def gradient_free_check(report, *, tolerance: float = ONLY_BROKEN_TOLERANCE,
                        min_examples: int = ONLY_BROKEN_MIN_EXAMPLES) -> Diagnostic:
  """Does a gradient-free attack break examples that every gradient attack missed?

  Args:
    report: an `evaluation.Report`; gradient-free attacks are those named 'square'.
  """
  names = list(report.correct)
  free = [n for n in names if n in GRADIENT_FREE]
  gradient = [n for n in names if n not in ('clean', *GRADIENT_FREE, *MIXED)]
  return _only_broken_check('gradient_free_beats_gradient', report.correct, free, gradient,
                            'a gradient-free attack (square)', 'gradient', tolerance,
                            min_examples)


def single_step_check(report, *, tolerance: float = ONLY_BROKEN_TOLERANCE,
                      min_examples: int = ONLY_BROKEN_MIN_EXAMPLES) -> Diagnostic:
  """Does a single-step attack break examples that every iterative gradient attack missed?"""
  names = list(report.correct)
  single = [n for n in names if n in SINGLE_STEP]
  iterative = [n for n in names if n not in ('clean', 'square', *SINGLE_STEP)]
  return _only_broken_check('single_step_beats_iterative', report.correct, single, iterative,
                            'a single-step attack (fgsm/stepll)', 'iterative', tolerance,
                            min_examples)


# ---------------------------------------------------------------------------------------------
# Checks that query the model.

def _batches(dataset, max_examples: int | None):
  seen = 0
  for x, y in dataset:
    if max_examples is not None:
      if seen >= max_examples:
        return
      x, y = x[:max_examples - seen], y[:max_examples - seen]
    seen += int(tf.shape(x)[0])
    yield tf.cast(x, tf.float32), tf.cast(y, tf.int32)


def _spec(dataset):
  shape = tuple(dataset.element_spec[0].shape[1:])
  return (tf.TensorSpec([None, *shape], tf.float32), tf.TensorSpec([None], tf.int32))


def sweep_eps_values(eps: float) -> list[float]:
  """eps, 2 eps, 4 eps and 1 (every image reachable), those in (0, 1], increasing."""
  values = {round(v, 9): v for v in (eps, min(2 * eps, 1.0), min(4 * eps, 1.0), 1.0) if v > 0}
  return sorted(values.values())


def eps_sweep(model_fn, dataset, *, eps_values: Sequence[float], num_steps: int = 20,
              max_examples: int | None = None) -> dict[float, float]:
  """PGD-CE accuracy at each eps (from x, no random start, step 2.5 eps / num_steps).

  Returns:
    eps -> accuracy.
  """
  if not eps_values:
    raise ValueError('eps_values is empty.')
  for e in eps_values:
    attacks_lib.check_eps(e, 'eps_values')
  spec = _spec(dataset)

  def compiled(e):
    step = 2.5 * e / num_steps

    @tf.function(input_signature=spec)
    def correct(x, y):
      x_adv = attacks_lib.pgd(model_fn, x, y, eps=e, step_size=step, num_steps=num_steps,
                              random_init=False)
      return tf.equal(tf.argmax(model_fn(x_adv), axis=-1, output_type=tf.int32), y)
    return correct

  result = {}
  for e in eps_values:
    fn = compiled(e)
    correct = np.concatenate([fn(x, y).numpy() for x, y in _batches(dataset, max_examples)])
    result[float(e)] = float(correct.mean())
    logging.info('eps sweep: eps %.4f accuracy %.4f', e, result[float(e)])
  return result


def eps_sweep_check(accuracy: dict[float, float], *,
                    final_tolerance: float = SWEEP_FINAL_TOLERANCE,
                    rise_tolerance: float = SWEEP_RISE_TOLERANCE) -> Diagnostic:
  """Fires if accuracy does not reach ~0 at the largest eps or rises as eps grows."""
  eps_values = sorted(accuracy)
  curve = [accuracy[e] for e in eps_values]
  final = curve[-1]
  rise = max([b - a for a, b in zip(curve, curve[1:])] + [0.0])
  fired = final > final_tolerance or rise > rise_tolerance
  return Diagnostic(
      'eps_sweep_not_zero', fired, final, final_tolerance,
      f'PGD accuracy at eps {eps_values[-1]:g}; it must fall to ~0 as eps grows (and never '
      f'rise by more than {rise_tolerance:g})',
      {'eps': eps_values, 'accuracy': curve, 'max_rise': rise,
       'rise_tolerance': rise_tolerance})


def loss_curve(model_fn, dataset, *, eps: float, num_steps: int = 20,
               max_examples: int | None = None) -> dict[str, Any]:
  """Runs PGD-CE from x (no random start, step 2.5 eps / num_steps) and records its progress.

  Returns:
    dict with 'ce' and 'margin': mean over examples after each step, [num_steps + 1] (index 0 is
    x itself), and 'margin_rise': per-example max over steps of margin - margin at x, [N].
  """
  eps = attacks_lib.check_eps(eps)
  step = 2.5 * eps / num_steps

  @tf.function(input_signature=_spec(dataset))
  def run(x, y):
    objective = lambda images: attacks_lib.cross_entropy(model_fn(images), y)

    def measure(images):
      logits = model_fn(images)
      return attacks_lib.cross_entropy(logits, y), attacks_lib.cw_margin(logits, y)

    ce0, margin0 = measure(x)
    ces = tf.TensorArray(tf.float32, size=num_steps + 1).write(0, ce0)
    margins = tf.TensorArray(tf.float32, size=num_steps + 1).write(0, margin0)

    def body(i, x_adv, ces, margins, best):
      grad = attacks_lib.input_gradient(objective, x_adv)
      x_adv = attacks_lib.project(x_adv + step * tf.sign(grad), x, eps)
      ce, margin = measure(x_adv)
      return (i + 1, x_adv, ces.write(i + 1, ce), margins.write(i + 1, margin),
              tf.maximum(best, margin))

    _, _, ces, margins, best = tf.while_loop(
        lambda i, *_: i < num_steps, body, (tf.constant(0), x, ces, margins, margin0))
    return ces.stack(), margins.stack(), best - margin0

  ce_parts, margin_parts, rises = [], [], []
  for x, y in _batches(dataset, max_examples):
    ce, margin, rise = run(x, y)
    ce_parts.append(ce.numpy())
    margin_parts.append(margin.numpy())
    rises.append(rise.numpy())
  ce = np.concatenate(ce_parts, axis=1)
  margin = np.concatenate(margin_parts, axis=1)
  return {'ce': ce.mean(axis=1).tolist(), 'margin': margin.mean(axis=1).tolist(),
          'margin_rise': np.concatenate(rises)}


def loss_curve_check(curve: dict[str, Any], *, tolerance: float = LOSS_FLAT_TOLERANCE,
                     min_rise: float = LOSS_MIN_RISE) -> Diagnostic:
  """Fires if too many examples' margin never rises along the PGD path."""
  rise = np.asarray(curve['margin_rise'])
  flat = float(np.mean(rise <= min_rise))
  return Diagnostic(
      'pgd_loss_not_increasing', flat > tolerance, flat, tolerance,
      f'fraction of examples whose margin never rises by {min_rise:g} along PGD-CE; the loss '
      f'should increase with the steps',
      {'mean_ce': [float(v) for v in curve['ce']],
       'mean_margin': [float(v) for v in curve['margin']], 'min_rise': min_rise})


def zero_gradient_fraction(model_fn, dataset, *, eps: float, seed: int = 0,
                           max_examples: int | None = None) -> dict[str, float]:
  """Fractions of examples whose CE input gradient is exactly zero at x and at a random point.

  Returns:
    {'at_x': fraction, 'at_random': fraction, 'either': fraction}.
  """
  eps = attacks_lib.check_eps(eps)
  spec = _spec(dataset) + (tf.TensorSpec([2], tf.int32),)

  @tf.function(input_signature=spec)
  def zero(x, y, seed):
    objective = lambda images: attacks_lib.cross_entropy(model_fn(images), y)

    def is_zero(images):
      grad = attacks_lib.input_gradient(objective, images)
      return tf.equal(tf.reduce_max(tf.abs(grad), axis=[1, 2, 3]), 0.0)

    return is_zero(x), is_zero(attacks_lib.random_start(x, eps, seed))

  at_x, at_random = [], []
  for index, (x, y) in enumerate(_batches(dataset, max_examples)):
    a, b = zero(x, y, tf.constant([seed, index], tf.int32))
    at_x.append(a.numpy())
    at_random.append(b.numpy())
  at_x, at_random = np.concatenate(at_x), np.concatenate(at_random)
  return {'at_x': float(at_x.mean()), 'at_random': float(at_random.mean()),
          'either': float((at_x | at_random).mean())}


def zero_gradient_check(fractions: dict[str, float], *,
                        tolerance: float = ZERO_GRADIENT_TOLERANCE) -> Diagnostic:
  return Diagnostic(
      'zero_gradients', fractions['either'] > tolerance, fractions['either'], tolerance,
      'fraction of examples with an all-zero cross-entropy input gradient (at x or at a random '
      'point of the ball)', dict(fractions))


def run_all(model_fn, dataset, report=None, *, eps: float, sweep_steps: int = 20,
            curve_steps: int = 20, max_examples: int | None = None, seed: int = 0
            ) -> list[Diagnostic]:
  """Every check: those on `report` (if given) and those that query `model_fn` on `dataset`.

  Args:
    model_fn: x -> logits, inference mode.
    dataset: (x, y) batches.
    report: an `evaluation.Report` of the same model, or None.
    eps: the evaluation eps.
    sweep_steps, curve_steps: PGD steps of the eps sweep and of the loss curve.
    max_examples: use at most this many examples of `dataset` for the model queries.
    seed: seed of the random points of the zero-gradient check.
  """
  checks = []
  if report is not None:
    checks += [gradient_free_check(report), single_step_check(report)]
  checks.append(eps_sweep_check(eps_sweep(model_fn, dataset, eps_values=sweep_eps_values(eps),
                                          num_steps=sweep_steps, max_examples=max_examples)))
  checks.append(loss_curve_check(loss_curve(model_fn, dataset, eps=eps, num_steps=curve_steps,
                                            max_examples=max_examples)))
  checks.append(zero_gradient_check(zero_gradient_fraction(model_fn, dataset, eps=eps, seed=seed,
                                                           max_examples=max_examples)))
  for check in checks:
    log = logging.warning if check.fired else logging.info
    log('Diagnostic %s: %s (value %s, threshold %g).', check.name,
        'FIRED' if check.fired else 'ok', check.value, check.threshold)
  return checks
