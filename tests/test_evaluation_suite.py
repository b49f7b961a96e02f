"""Tests for aad_tf.evaluation.suite: the attack names, their settings and step sizes."""

import pytest

from aad_tf import evaluation


ISSUE_NAMES = ['clean', 'fgsm', 'pgd10', 'pgd20', 'pgd40', 'pgd100', 'cw10', 'cw20', 'cw40',
               'cw100', 'stepll', 'stepll_a3', 'iter_stepll', 'iter_stepll_a3', 'pgd_a3',
               'apgd_ce', 'apgd_dlr', 'apgd_t', 'square', 'adaptive']


def test_the_suite_has_exactly_the_issue_names():
  assert sorted(evaluation.ALL_ATTACKS) == sorted(ISSUE_NAMES)
  attacks_by_name = evaluation.standard_attacks(evaluation.ALL_ATTACKS, eps=0.3)
  assert list(attacks_by_name) == list(evaluation.ALL_ATTACKS)


@pytest.mark.parametrize('names, eps, message', [
    (['clean', 'pgd'], 0.3, "Unknown attack 'pgd'"),
    (['clean', 'PGD20'], 0.3, 'Unknown attack'),
    (['clean', 'fgsm'], 1.5, r'eps must be in \[0, 1\]'),
    (['clean'], -0.1, r'eps must be in \[0, 1\]'),
    (['clean', 'worst_case'], 0.3, 'worst_case'),
    (['fgsm', 'fgsm'], 0.3, 'twice'),
    (['pgd0'], 0.3, 'steps'),
    ([], 0.3, 'No attack'),
])
def test_bad_names_and_eps_are_clear_errors(names, eps, message):
  with pytest.raises(ValueError, match=message):
    evaluation.standard_attacks(names, eps=eps)


def test_bad_settings_are_clear_errors():
  with pytest.raises(ValueError, match='square_queries'):
    evaluation.standard_attacks(['square'], eps=0.3, square_queries=0)
  with pytest.raises(ValueError, match='kappa'):
    evaluation.standard_attacks(['pgd_a3'], eps=0.3, kappa='median')


def test_documented_step_sizes():
  table = evaluation.standard_attacks(['fgsm', 'pgd40', 'cw100', 'pgd100_r5', 'iter_stepll',
                                       'pgd_a3', 'apgd_dlr', 'square', 'adaptive'], eps=0.3)
  assert table['fgsm'].params == {'step_size': 0.3}
  assert table['pgd40'].params['step_size'] == pytest.approx(2.5 * 0.3 / 40)
  assert table['cw100'].params['loss'] == 'cw'
  assert table['pgd100_r5'].params['num_restarts'] == 5
  # A^3 pairs with the plain attack of the same steps (default 10: pgd_a3 <-> pgd10).
  assert table['iter_stepll'].params == {'num_steps': 10, 'step_size': pytest.approx(0.03)}
  assert table['pgd_a3'].params['step_size'] == pytest.approx(2.5 * 0.3 / 10)
  assert table['pgd_a3'].params['sigma'] == 10.0
  assert table['apgd_dlr'].params == {'num_steps': 100, 'num_restarts': 1, 'loss': 'dlr'}
  assert table['square'].gradient_free and table['square'].params['num_queries'] == 1000
  assert table['adaptive'].needs_features and table['pgd_a3'].needs_features


def test_square_and_autoattack_get_the_keras_model(monkeypatch):
  """A Target made from a Keras model carries it, so Square can plan windowed queries; a
  SavedModel or bare model_fn Target has none and Square runs whole forward passes."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from aad_tf.attacks import windowed  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
  given = []
  original = windowed.plan
  monkeypatch.setattr(windowed, 'plan',
                      lambda fn, m, shape: given.append(m) or original(fn, m, shape))
  x, y = tf.random.uniform([3, 8, 8, 1]), tf.constant([0, 1, 2])
  target = evaluation.Target.from_keras(model)
  assert target.keras_model is model
  table = evaluation.standard_attacks(['square'], eps=0.1, square_queries=3)
  table['square'].run(target, x, y, tf.constant([0, 1]))
  table['square'].run(evaluation.Target(target.model_fn), x, y, tf.constant([0, 1]))
  assert given == [model, None]
  # The autoattack entry hands it on (its fixed budgets are too slow here, so record the call).
  from aad_tf.attacks import autoattack  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(autoattack, 'autoattack_stages',
                      lambda *a, **k: calls.append(k) or (a[1], {'clean': tf.ones([3], bool)}))
  evaluation.standard_attacks(['autoattack'], eps=0.1)['autoattack'].run(
      target, x, y, tf.constant([0, 1]))
  assert calls[0]['model'] is model


def test_autoattack_gives_square_the_model(monkeypatch):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from aad_tf.attacks import autoattack  # pylint: disable=g-import-not-at-top
  from aad_tf.attacks import square  # pylint: disable=g-import-not-at-top
  model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
  given = []
  monkeypatch.setattr(square, 'square_linf',
                      lambda fn, x, y, **k: given.append((k['model'], k['rescale_schedule']))
                      or (x, tf.zeros(tf.shape(y), tf.bool)))
  x = tf.random.uniform([3, 8, 8, 1])
  y = tf.argmax(model(x), -1, output_type=tf.int32)  # correct, and robust at eps 0: Square runs
  autoattack.autoattack(lambda images: model(images), x, y, eps=0.0, num_steps=1,
                        num_target_classes=1, square_queries=2, model=model)
  assert given == [(model, False)]
