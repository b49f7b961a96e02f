"""Tests for aad_tf.evaluation.loop: worst case, compiled and seeded runs, SavedModel targets,
the adaptive attack."""

import json

import numpy as np
import pytest
import tensorflow as tf

import eval_models
from aad_tf import attacks
from aad_tf import evaluation
from aad_tf import export as export_lib
from aad_tf import gradcam


def test_worst_case_is_the_per_example_and():
  rng = np.random.default_rng(0)
  correct = {name: rng.random(50) < 0.8 for name in ('clean', 'fgsm', 'pgd20')}
  report = evaluation.Report(50, {k: float(v.mean()) for k, v in correct.items()}, {}, correct)
  want = np.mean([all(correct[k][i] for k in correct) for i in range(50)])
  assert report.worst_case == pytest.approx(want)
  assert report.worst_case < min(report.accuracy.values())
  assert report.to_json()['accuracy']['worst_case'] == pytest.approx(want)


@pytest.fixture(scope='module')
def setup(shared_data_dir):
  model = eval_models.trained_model(shared_data_dir)
  x, y = eval_models.first_test_examples(shared_data_dir, 60)
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(25)  # a ragged last batch
  return model, x, y, dataset


SMALL = dict(a3_num_steps=3, apgd_num_steps=5, square_queries=20, adaptive_num_steps=5)


def test_evaluate_every_kind_of_attack(setup):
  model, x, y, dataset = setup
  names = ['clean', 'fgsm', 'pgd10', 'stepll', 'stepll_a3', 'iter_stepll', 'iter_stepll_a3',
           'pgd3', 'pgd_a3', 'apgd_dlr', 'square', 'adaptive']
  report = evaluation.evaluate(model, dataset, evaluation.standard_attacks(names, eps=0.2,
                                                                           **SMALL),
                               progress=False, gradcam_layer=eval_models.GRADCAM_LAYER)
  assert list(report.accuracy) == names and report.num_examples == 60 and not report.skipped
  want_clean = np.mean(np.argmax(model(x, training=False).numpy(), -1) == y)
  assert report.accuracy['clean'] == pytest.approx(want_clean)
  for name in names[1:]:
    assert report.accuracy[name] < report.accuracy['clean'] - 0.1, name
  assert report.worst_case <= min(report.accuracy.values())
  table = evaluation.format_table(report, row_name='small')
  assert '| | clean | fgsm | pgd3 | pgd10 |' in table
  # Table 7 layout: pgd_a3 next to the plain PGD with the same steps.
  assert '| | stepll | stepll_a3 | iter_stepll | iter_stepll_a3 | pgd3 | pgd_a3 |' in table
  assert '| apgd_dlr | square | adaptive | worst_case |' in table


def test_runs_are_reproducible_and_seeded(setup):
  model, _, _, dataset = setup
  table = evaluation.standard_attacks(['pgd10', 'square'], eps=0.15, square_queries=20)
  first = evaluation.evaluate(model, dataset, table, progress=False, seed=1)
  again = evaluation.evaluate(model, dataset, table, progress=False, seed=1)
  other = evaluation.evaluate(model, dataset, table, progress=False, seed=2)
  for name in table:
    np.testing.assert_array_equal(first.correct[name], again.correct[name])
  assert any(not np.array_equal(first.correct[n], other.correct[n]) for n in table) or (
      first.accuracy == other.accuracy)


def test_an_evaluation_in_pieces_equals_the_whole(setup):
  model, x, y, _ = setup
  table = evaluation.standard_attacks(['pgd5', 'square'], eps=0.15, square_queries=10)
  batches = lambda a, b: tf.data.Dataset.from_tensor_slices((x[a:b], y[a:b])).batch(20)
  whole = evaluation.evaluate(model, batches(0, 60), table, progress=False, seed=4)
  head = evaluation.evaluate(model, batches(0, 20), table, progress=False, seed=4)
  tail = evaluation.evaluate(model, batches(20, 60), table, progress=False, seed=4,
                             first_batch=1)
  for name in table:
    np.testing.assert_array_equal(whole.correct[name],
                                  np.concatenate([head.correct[name], tail.correct[name]]))
  unaligned = evaluation.evaluate(model, batches(20, 60), table, progress=False, seed=4)
  assert any(not np.array_equal(unaligned.correct[n], tail.correct[n]) for n in table)


def test_one_trace_per_attack(setup):
  model, x, y, _ = setup
  fn = evaluation.compile_attack(model, evaluation.make_attack(
      'pgd5', evaluation.AttackSettings(eps=0.1)), (28, 28, 1))
  fn(x[:10], y[:10], (0, 1))
  fn(x[:7], y[:7], (0, 2))
  fn(x[:3], y[:3])
  assert fn.tf_function.experimental_get_tracing_count() == 1


def test_saved_model_target(setup, tmp_path):
  model, x, y, dataset = setup
  export_dir = str(tmp_path / 'saved_model')
  export_lib.export_saved_model(model, eval_models.GRADCAM_LAYER, export_dir)
  target = evaluation.Target.from_saved_model(export_dir)
  np.testing.assert_allclose(target.model_fn(tf.constant(x)).numpy(),
                             model(x, training=False).numpy(), atol=1e-4)
  table = evaluation.standard_attacks(['clean', 'pgd10', 'pgd_a3', 'adaptive'], eps=0.1,
                                      **SMALL)
  report = evaluation.evaluate(target, dataset, table, progress=False)
  keras_report = evaluation.evaluate(model, dataset, table, progress=False,
                                     gradcam_layer=eval_models.GRADCAM_LAYER)
  # Gradients flow through the loaded signature: the same seeded attack gives the same result.
  assert report.accuracy['pgd10'] == pytest.approx(keras_report.accuracy['pgd10'], abs=0.02)
  assert report.accuracy['pgd10'] < report.accuracy['clean'] - 0.1
  # Attacks that need Grad-CAM features are skipped, and the report says why.
  assert set(report.skipped) == {'pgd_a3', 'adaptive'}
  assert 'Grad-CAM' in report.skipped['pgd_a3']
  assert 'pgd_a3' not in report.accuracy and 'pgd_a3' in keras_report.accuracy
  assert 'Skipped: pgd_a3' in evaluation.format_table(report)
  with pytest.raises(ValueError, match='no signature'):
    evaluation.Target.from_saved_model(export_dir, signature='nope')


def test_adaptive_attack_fools_while_preserving_attention(setup):
  """Among examples both attacks fool, the adaptive one moves Grad-CAM less than PGD does."""
  model, x, y, _ = setup
  features = gradcam.FeatureModel(model, eval_models.GRADCAM_LAYER).fn()
  model_fn = lambda images: model(images, training=False)
  x, y = tf.constant(x), tf.constant(y)
  eps, steps = 0.2, 20
  x_pgd = attacks.pgd(model_fn, x, y, eps=eps, step_size=2.5 * eps / steps, num_steps=steps,
                      seed=[0, 5])
  x_ada = attacks.adaptive_attention(features, x, y, eps=eps, step_size=2.5 * eps / steps,
                                     num_steps=steps, seed=[0, 5])
  assert float(tf.reduce_max(tf.abs(x_ada - x))) <= eps + 1e-6
  assert 0.0 <= float(tf.reduce_min(x_ada)) and float(tf.reduce_max(x_ada)) <= 1.0
  wrong = lambda images: np.argmax(model_fn(images).numpy(), -1) != y.numpy()
  both = wrong(x_pgd) & wrong(x_ada)
  assert both.mean() > 0.5
  shift = attacks.attention_shift(features, x, y)
  assert shift(x_ada).numpy()[both].mean() < 0.8 * shift(x_pgd).numpy()[both].mean()


def test_attention_shift_is_zero_at_x(setup):
  model, x, y, _ = setup
  features = gradcam.FeatureModel(model, eval_models.GRADCAM_LAYER).fn()
  shift = attacks.attention_shift(features, tf.constant(x[:8]), tf.constant(y[:8]))
  np.testing.assert_allclose(shift(tf.constant(x[:8])).numpy(), 0.0, atol=1e-6)


def test_autoattack_keeps_the_stages_verdicts_and_equals_autoattack_stages(shared_data_dir,
                                                                          tmp_path):
  """A stage's own verdict stands: the evaluation does not re-predict x_adv at another batch
  size and undo it (issue 26). Batch-size-dependent rounding is simulated by a model_fn that
  favours class 0 by one logit on a batch of exactly N images: APGD's first misclassified
  iterates, found on smaller sub-batches, are classified correctly again on the whole batch.
  The evaluation reports exactly what `autoattack_stages` reports for the same batch and seed,
  stage by stage, and robustness.json / .md keep the stages and the per-example flags."""
  from aad_tf.attacks import autoattack  # pylint: disable=g-import-not-at-top
  model = eval_models.trained_model(shared_data_dir)
  x, y = eval_models.first_test_examples(shared_data_dir, 300)
  keep = np.flatnonzero(y == 0)[:12]
  x, y = x[keep], y[keep]

  def model_fn(images):
    logits = model(images, training=False)
    whole_batch = tf.cast(tf.equal(tf.shape(images)[0], len(keep)), logits.dtype)
    return logits + whole_batch * tf.one_hot(0, logits.shape[-1], dtype=logits.dtype)

  eps, seed = 0.15, 3
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(keep))
  report = evaluation.evaluate(evaluation.Target(model_fn), dataset,
                               evaluation.standard_attacks(['autoattack'], eps=eps),
                               progress=False, seed=seed)
  x_adv, robust = tf.function(lambda a, b: autoattack.autoattack_stages(
      model_fn, a, b, eps=eps, seed=evaluation.attack_seed(seed, 'autoattack', 0)))(
          tf.constant(x), tf.constant(y))
  assert list(report.stages['autoattack']) == ['clean', *autoattack.STAGES]
  for stage, flags in robust.items():
    np.testing.assert_array_equal(report.stages['autoattack'][stage], flags.numpy())
  np.testing.assert_array_equal(report.correct['autoattack'], robust['square'].numpy())
  # Re-predicted on the whole batch, some of the adversarial images look correct again.
  repredicted = np.argmax(model_fn(x_adv).numpy(), -1) == y
  assert repredicted.mean() > report.accuracy['autoattack'] > 0
  assert np.all(report.correct['autoattack'] <= repredicted)

  evaluation.write_robustness(
      str(tmp_path), report, evaluation.format_table(report, row_name='m'), row_name='m',
      dataset='mnist', model='lenet', source='test', eps=eps, seed=seed, first_example=0,
      wall_time=1.0, settings={})
  saved = json.loads((tmp_path / 'robustness.json').read_text())
  stages = saved['stages']['autoattack']
  assert set(stages['accuracy']) == {'clean', *autoattack.STAGES}  # JSON keys are sorted
  assert stages['accuracy']['square'] == pytest.approx(report.accuracy['autoattack'])
  np.testing.assert_array_equal(evaluation.from_bits(saved['correct']['autoattack']),
                                report.correct['autoattack'])
  np.testing.assert_array_equal(evaluation.from_bits(stages['correct']['apgd_ce']),
                                robust['apgd_ce'].numpy())
  assert len(saved['correct']['worst_case']) == len(keep)
  markdown = (tmp_path / 'robustness.md').read_text()
  assert 'autoattack: accuracy after each stage' in markdown
  assert '| | clean | apgd_ce | apgd_t | fab_t | square |' in markdown


def test_bits_round_trip():
  flags = np.array([True, False, False, True, True])
  assert evaluation.to_bits(flags) == '10011'
  np.testing.assert_array_equal(evaluation.from_bits('10011'), flags)
  with pytest.raises(ValueError):
    evaluation.from_bits('10x')
