"""The evaluation suite: attack names, worst case, compiled and seeded runs, SavedModels, tables,
the adaptive attack, and trainers.evaluate end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import eval_models
from aad_tf import attacks
from aad_tf import evaluation
from aad_tf import export as export_lib
from aad_tf import gradcam
from aad_tf import models
from aad_tf import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


# ---------------------------------------------------------------------------------------------
# trainers.evaluate end to end.

def run_evaluate(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
  return subprocess.run([sys.executable, '-m', 'trainers.evaluate', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, shared_data_dir):
  """A trainers.main-style run directory holding an (untrained) LeNet."""
  model_dir = tmp_path_factory.mktemp('run')
  config = training.TrainConfig(model_dir=str(model_dir), dataset='mnist', model='lenet',
                                data_dir=str(shared_data_dir), seed=3, eval_eps=0.2)
  training.write_json(str(model_dir / 'config.json'), config.to_json())
  # Not read: config.json holds eval_eps (flags.txt is a replay file, not a settings store).
  (model_dir / 'flags.txt').write_text('--dataset=mnist\n--eval_eps=0.25\n--aad\n')
  classifier = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  os.makedirs(model_dir / 'export')
  export_lib.export_all(classifier, models.get_spec('lenet').gradcam_layer, str(model_dir))
  return model_dir


def test_evaluate_binary_on_a_run(run_dir, shared_data_dir):
  result = run_evaluate(
      f'--model_dir={run_dir}', f'--data_dir={shared_data_dir}', '--eval_examples=12',
      '--batch_size=5', '--attacks=clean,fgsm,pgd_a3,apgd_ce,square', '--a3_num_steps=2',
      '--apgd_num_steps=3', '--square_queries=5', '--diagnostic_examples=6', '--sweep_steps=2',
      '--curve_steps=2')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((run_dir / 'robustness.json').read_text())
  assert report['dataset'] == 'mnist' and report['model'] == 'lenet'
  assert report['eps'] == 0.2  # the run's eval_eps, from its config.json
  assert report['seed'] == 3  # the run's seed
  assert report['num_examples'] == 12 and report['first_example'] == 0
  assert set(report['accuracy']) == {'clean', 'fgsm', 'pgd_a3', 'apgd_ce', 'square',
                                     'worst_case'}
  assert report['attacks']['pgd_a3']['num_steps'] == 2
  assert {d['name'] for d in report['diagnostics']} == {
      'gradient_free_beats_gradient', 'single_step_beats_iterative', 'eps_sweep_not_zero',
      'pgd_loss_not_increasing', 'zero_gradients'}
  assert report['versions']['tensorflow'] == tf.__version__
  assert report['wall_time_s'] > 0 and report['source'].endswith('model.keras')
  markdown = (run_dir / 'robustness.md').read_text()
  assert '| | clean | fgsm |' in markdown and 'Gradient-masking diagnostics' in markdown
  assert 'Diagnostics fired:' in result.stdout


def test_evaluate_binary_on_a_run_whose_config_json_predates_eval_eps(run_dir, tmp_path):
  old = tmp_path / 'old_run'
  old.mkdir()
  saved = json.loads((run_dir / 'config.json').read_text())
  del saved['eval_eps'], saved['gradcam_layer']
  (old / 'config.json').write_text(json.dumps(saved))
  (old / 'flags.txt').write_text('--dataset=mnist\n--eval_eps=0.15\n')
  os.symlink(run_dir / 'export', old / 'export')
  result = run_evaluate(f'--model_dir={old}', '--eval_examples=5', '--batch_size=5',
                        '--attacks=clean', '--nodiagnostics')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((old / 'robustness.json').read_text())['eps'] == 0.15  # from flags.txt
  assert result.stderr.count('To migrate, add "eval_eps": 0.15 to that config.json') == 1


@pytest.mark.slow  # the SavedModel path is covered in-process by test_saved_model_target
def test_evaluate_binary_on_a_saved_model(run_dir, shared_data_dir, tmp_path):
  result = run_evaluate(
      f'--saved_model={run_dir / "export" / "saved_model"}', '--dataset=mnist',
      f'--data_dir={shared_data_dir}', '--eval_examples=6', '--attacks=clean,fgsm,adaptive',
      '--nodiagnostics', f'--output_dir={tmp_path}', '--eps=0.1')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / 'robustness.json').read_text())
  assert report['eps'] == 0.1 and set(report['accuracy']) == {'clean', 'fgsm', 'worst_case'}
  assert 'adaptive' in report['skipped'] and report['diagnostics'] == []


def test_evaluate_binary_bad_flags_fail_fast(run_dir):
  # The eps check shares this code path (see test_bad_names_and_eps_are_clear_errors).
  result = run_evaluate(f'--model_dir={run_dir}', '--data_dir=/nonexistent',
                        '--attacks=clean,pgd', timeout=300)
  assert result.returncode != 0
  assert "Unknown attack 'pgd'" in result.stderr and 'UsageError' not in result.stderr
  assert 'DataNotFoundError' not in result.stderr  # failed before looking for data
  result = run_evaluate(f'--model_dir={run_dir}', '--data_dir=/nonexistent', '--batch_size=5',
                        '--eval_offset=7', timeout=300)
  assert result.returncode != 0 and 'must be a multiple of --batch_size=5' in result.stderr
