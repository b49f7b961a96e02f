"""AutoAttack (standard version): the stages run on what is still robust, the gradient-free
stage catches a gradient-masked model, the suite reports it by name with its version, and
(slow, optional) it agrees with ART's AutoAttack."""

import numpy as np
import pytest
import tensorflow as tf

import eval_models
from aad_tf.attacks import apgd
from aad_tf.attacks import autoattack
from aad_tf import evaluation


@pytest.fixture(scope='module')
def data(shared_data_dir):
  x, y = eval_models.first_test_examples(shared_data_dir, 40)
  return tf.constant(x), tf.constant(y)


def predict(model_fn, images):
  return np.argmax(model_fn(images).numpy(), -1)


def test_stages_only_shrink_and_the_result_is_what_they_report(shared_data_dir, data):
  model = eval_models.adversarial_model(shared_data_dir)
  model_fn = lambda images: model(images, training=False)
  x, y = data
  eps = 0.15
  x_adv, robust = autoattack.autoattack_stages(model_fn, x, y, eps=eps, seed=[0, 1], num_steps=5,
                                               num_target_classes=3, square_queries=30)
  assert list(robust) == ['clean', *autoattack.STAGES]
  masks = [v.numpy() for v in robust.values()]
  np.testing.assert_array_equal(masks[0], predict(model_fn, x) == y.numpy())
  for before, after in zip(masks, masks[1:]):
    assert np.all(after <= before)  # an example once fooled is never attacked again
  # Robust examples come back as x; every point model_fn misclassifies counts as fooled (and a
  # stage may also count one it found misclassified on its own sub-batch).
  np.testing.assert_array_equal(x_adv.numpy()[masks[-1]], x.numpy()[masks[-1]])
  assert np.all(masks[-1] <= (predict(model_fn, x_adv) == y.numpy()))
  assert 0 < masks[-1].mean() < masks[0].mean()
  assert float(tf.reduce_max(tf.abs(x_adv - x))) <= eps + 1e-6
  assert float(tf.reduce_min(x_adv)) >= 0.0 and float(tf.reduce_max(x_adv)) <= 1.0
  # At least as strong as its first stage, APGD-CE, alone.
  alone = apgd.apgd(model_fn, x, y, eps=eps, num_steps=5, seed=[0, 1])
  assert masks[-1].mean() <= np.mean(predict(model_fn, alone) == y.numpy())


def test_square_breaks_a_gradient_masked_model_that_the_gradient_stages_miss(shared_data_dir,
                                                                               data):
  """Behind a 1/255 input quantisation every input gradient is zero: APGD only keeps its random
  start and FAB cannot move, so the examples Square fools reach it still robust."""
  masked = eval_models.masked_fn(eval_models.trained_model(shared_data_dir))
  x, y = data
  _, robust = autoattack.autoattack_stages(masked, x, y, eps=0.1, seed=[0, 2], num_steps=5,
                                           num_target_classes=2, square_queries=300)
  after = {name: float(v.numpy().mean()) for name, v in robust.items()}
  assert after['fab_t'] == after['apgd_t']  # FAB-T cannot move without gradients
  assert after['square'] < after['fab_t'] - 0.2, after


def test_the_suite_runs_autoattack_by_name_with_its_version(shared_data_dir, data):
  """Full standard budgets on a normally trained model at eps 0.3: APGD-CE fools (nearly) every
  example, so the later stages have (almost) nothing left to attack and the test stays short."""
  model = eval_models.trained_model(shared_data_dir)
  x, y = data
  attacks = evaluation.standard_attacks(['clean', 'apgd_t', 'autoattack'], eps=0.3)
  assert attacks['autoattack'].params['version'] == autoattack.VERSION
  assert attacks['autoattack'].params['square'] == {'num_queries': 5000, 'p_init': 0.8,
                                                    'num_restarts': 1, 'rescale_schedule': False}
  assert 'apgd_t' in evaluation.ALL_ATTACKS and 'autoattack' not in evaluation.ALL_ATTACKS
  dataset = tf.data.Dataset.from_tensor_slices((x[:20], y[:20])).batch(20)
  report = evaluation.evaluate(model, dataset, attacks, progress=False)
  assert report.accuracy['clean'] > 0.8
  assert report.accuracy['autoattack'] <= report.accuracy['apgd_t']
  assert report.to_json()['attacks']['autoattack']['version'].startswith('standard')


@pytest.mark.slow
def test_agrees_with_art(shared_data_dir):
  """ART's AutoAttack (see benchmarks/autoattack_vs_art.py) on the PGD-trained CNN: the robust
  accuracies agree within 5 points on 100 images at reduced budgets (measured: 42 % both, ours
  2.3x faster in CPU time)."""
  pytest.importorskip('art')
  pytest.importorskip('multiprocess')
  from benchmarks import autoattack_vs_art  # pylint: disable=g-import-not-at-top
  model = eval_models.adversarial_model(shared_data_dir)
  x, y = eval_models.first_test_examples(shared_data_dir, 100)
  budgets = dict(eps=0.15, seed=0, num_steps=20, square_queries=300)
  ours = autoattack_vs_art.run_ours(model, x.astype(np.float32), y.astype(np.int32), **budgets)
  theirs = autoattack_vs_art.run_art(model, x.astype(np.float32), y.astype(np.int32), **budgets)
  assert 0.2 < theirs['robust_accuracy'] < 0.9  # the comparison is informative
  assert abs(ours['robust_accuracy'] - theirs['robust_accuracy']) <= 0.05, (ours, theirs)
  assert ours['max_linf'] <= 0.15 + 1e-6 and theirs['max_linf'] <= 0.15 + 1e-4
