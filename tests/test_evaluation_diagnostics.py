"""Gradient-masking diagnostics fire on a gradient-masked model and stay quiet on ordinary ones."""

import numpy as np
import pytest
import tensorflow as tf

import eval_models
from aad_tf.evaluation import diagnostics
from aad_tf import evaluation

EPS = 0.1  # the adversarial test model's training eps
ATTACKS = ['clean', 'fgsm', 'pgd10', 'apgd_ce', 'square']
MODEL_CHECKS = ('eps_sweep_not_zero', 'pgd_loss_not_increasing', 'zero_gradients')


def run_checks(model_fn, dataset):
  attacks = evaluation.standard_attacks(ATTACKS, eps=EPS, apgd_num_steps=10, square_queries=200)
  report = evaluation.evaluate(evaluation.Target(model_fn), dataset, attacks, progress=False)
  checks = diagnostics.run_all(model_fn, dataset, report, eps=EPS, sweep_steps=10,
                               curve_steps=10)
  return report, {check.name: check for check in checks}


@pytest.fixture(scope='module')
def dataset(shared_data_dir):
  x, y = eval_models.first_test_examples(shared_data_dir, 100)
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(50)


def test_masked_model_is_flagged(shared_data_dir, dataset):
  """round(255 x) / 255 in front of a normally trained model: same predictions, no gradient."""
  model = eval_models.trained_model(shared_data_dir)
  report, checks = run_checks(eval_models.masked_fn(model), dataset)
  # Gradient attacks see a zero gradient and fail; the model is not robust at all.
  assert report.accuracy['pgd10'] >= report.accuracy['clean'] - 0.05
  assert report.accuracy['square'] < report.accuracy['pgd10'] - 0.3
  for name in ('gradient_free_beats_gradient',) + MODEL_CHECKS:
    assert checks[name].fired, (name, checks[name])
  assert checks['zero_gradients'].value == 1.0


@pytest.mark.parametrize('which', ['trained_model', 'adversarial_model'])
def test_ordinary_models_are_not_flagged(shared_data_dir, dataset, which):
  model = getattr(eval_models, which)(shared_data_dir)
  report, checks = run_checks(lambda images: model(images, training=False), dataset)
  assert report.accuracy['clean'] > 0.9
  fired = [name for name, check in checks.items() if check.fired]
  assert not fired, {name: checks[name] for name in fired}
  # Everything that could run did run.
  assert all(check.value is not None for check in checks.values())
  sweep = checks['eps_sweep_not_zero'].details
  assert sweep['eps'] == [0.1, 0.2, 0.4, 1.0] and sweep['accuracy'][-1] == 0.0
  curve = checks['pgd_loss_not_increasing'].details['mean_ce']
  assert curve[-1] > curve[0]


def test_only_broken_by_against_a_hand_count():
  correct = {'clean': np.array([1, 1, 1, 1, 0, 1], bool),
             'pgd': np.array([1, 1, 0, 1, 0, 1], bool),
             'apgd': np.array([1, 1, 1, 0, 0, 1], bool),
             'square': np.array([0, 1, 0, 0, 0, 0], bool)}
  # Example 0 and 5 survive both gradient attacks and fall to square; 2, 3 fall to a gradient
  # attack; 4 is wrong on clean data already.
  only = diagnostics.only_broken_by(correct, ['square'], ['pgd', 'apgd'])
  np.testing.assert_array_equal(only, [1, 0, 0, 0, 0, 1])


def fake_report(square_only: int, n: int = 200):
  correct = {'clean': np.ones(n, bool), 'pgd20': np.ones(n, bool), 'square': np.ones(n, bool)}
  correct['square'][:square_only] = False
  return evaluation.Report(n, {k: float(v.mean()) for k, v in correct.items()}, {}, correct)


@pytest.mark.parametrize('square_only, fired', [(0, False), (2, False), (3, True), (10, True)])
def test_gradient_free_threshold(square_only, fired):
  # 1 % of 200 examples is 2: three or more square-only breaks fire.
  check = diagnostics.gradient_free_check(fake_report(square_only))
  assert check.fired == fired
  assert check.value == pytest.approx(square_only / 200)
  assert check.details['count'] == square_only


def test_autoattack_does_not_count_as_a_gradient_attack():
  # AutoAttack ends with Square, so it breaks what only Square breaks; it must not mask them.
  report = fake_report(10)
  report.correct['autoattack'] = report.correct['square'].copy()
  check = diagnostics.gradient_free_check(report)
  assert check.fired and check.details['others'] == ['pgd20']


def test_min_examples_guards_tiny_test_sets():
  check = diagnostics.gradient_free_check(fake_report(2, n=20))  # 10 %, but only 2 examples
  assert not check.fired


def test_gradient_free_check_needs_both_kinds():
  report = evaluation.Report(2, {'clean': 1.0}, {}, {'clean': np.ones(2, bool)})
  check = diagnostics.gradient_free_check(report)
  assert not check.fired and check.value is None and 'not run' in check.message


def test_single_step_check():
  n = 100
  correct = {'clean': np.ones(n, bool), 'fgsm': np.ones(n, bool), 'pgd20': np.ones(n, bool)}
  correct['fgsm'][:5] = False  # FGSM breaks five examples PGD cannot: the gradient is suspect
  report = evaluation.Report(n, {}, {}, correct)
  check = diagnostics.single_step_check(report)
  assert check.fired and check.details['count'] == 5


@pytest.mark.parametrize('curve, fired', [
    ({0.3: 0.9, 0.6: 0.2, 1.0: 0.0}, False),
    ({0.3: 0.9, 0.6: 0.5, 1.0: 0.3}, True),  # does not reach ~0
    ({0.3: 0.5, 0.6: 0.6, 1.0: 0.0}, True),  # rises with eps
    ({0.3: 0.5, 0.6: 0.51, 1.0: 0.01}, False),  # within the tolerances
])
def test_eps_sweep_check(curve, fired):
  assert diagnostics.eps_sweep_check(curve).fired == fired


def test_sweep_eps_values():
  assert diagnostics.sweep_eps_values(0.3) == [0.3, 0.6, 1.0]
  assert diagnostics.sweep_eps_values(8 / 255) == pytest.approx([8 / 255, 16 / 255, 32 / 255, 1])


def test_loss_curve_check_threshold():
  rise = np.concatenate([np.zeros(4), np.ones(96)])  # 4 % flat: below the 5 % threshold
  assert not diagnostics.loss_curve_check({'ce': [0, 1], 'margin': [0, 1],
                                           'margin_rise': rise}).fired
  rise[:6] = 0.0
  assert diagnostics.loss_curve_check({'ce': [0, 1], 'margin': [0, 1],
                                       'margin_rise': rise}).fired
