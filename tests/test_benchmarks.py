"""Tests for benchmarks/: the FLOP count and --models parser of throughput.py, the comparison
figures of autoattack_vs_art.py."""

import os
import types

import numpy as np
import pytest
from absl import app

from aad_tf import models
from benchmarks import throughput


def test_lenet_flops_match_a_hand_count():
  model = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  conv1 = 2 * 28 * 28 * 5 * 5 * 1 * 32
  conv2 = 2 * 14 * 14 * 5 * 5 * 32 * 64
  fc1 = 2 * 7 * 7 * 64 * 1024
  logits = 2 * 1024 * 10
  assert throughput.model_flops(model) == conv1 + conv2 + fc1 + logits


def test_resnet9_flops_count_every_convolution():
  model = models.get_model('resnet9', input_shape=(32, 32, 3), num_classes=10)
  # DAWNBench ResNet9: about 0.76 GFLOP per 32x32 image, almost all in six 3x3 convolutions.
  assert throughput.model_flops(model) == pytest.approx(0.7585e9, rel=1e-3)


def test_parse_models_reads_entries():
  parsed = throughput.parse_models(['lenet:mnist:100', 'resnet9:cifar10:32', 'resnet9:cifar10:8:16'])
  assert [(e.name, e.info.name, e.batch, e.width) for e in parsed] == [
      ('lenet', 'mnist', 100, None), ('resnet9', 'cifar10', 32, None), ('resnet9', 'cifar10', 8, 16)]


def test_model_width_reaches_every_network_the_benchmark_builds(monkeypatch):
  monkeypatch.setattr(throughput, 'FLAGS', types.SimpleNamespace(pgd_steps=1))
  entry, = throughput.parse_models(['resnet9:cifar10:4:8'])
  narrow = throughput.build_trainer(entry.name, 'madry_aad', entry.info, **entry.model_kwargs())
  default = throughput.build_trainer(entry.name, 'madry_aad', entry.info)
  # ResNet9's prep convolution has `width` filters (3x3x3 kernel).
  assert narrow.classifier.get_layer('prep_conv').kernel.shape[-1] == 8
  assert default.classifier.get_layer('prep_conv').kernel.shape[-1] == 64
  attacked = throughput.build_classifier(entry.name, entry.info, **entry.model_kwargs())
  assert attacked.get_layer('prep_conv').kernel.shape[-1] == 8


@pytest.mark.parametrize('entry, message', [
    ('lenet:mnist', 'model:dataset:batch'),
    ('lenet:mnist:0', 'model:dataset:batch'),
    ('lenet:mnist:x', 'model:dataset:batch'),
    ('resnet9:cifar10:8:0', 'model:dataset:batch'),
    ('resnet9:cifar10:8:16:1', 'model:dataset:batch'),
    ('lenet:mnist:8:16', "takes no width"),
    ('nope:mnist:10', "unknown model 'nope'"),
    ('lenet:nope:10', 'nope'),
])
def test_parse_models_rejects_bad_entries(entry, message):
  with pytest.raises(app.UsageError, match=message):
    throughput.parse_models([entry])


def test_reference_rates_are_positive_and_finite():
  assert 0 < throughput.matmul_flops_per_second(sizes=(64,), repeats=1) < float('inf')
  assert 0 < throughput.conv_flops_per_second(repeats=1) < float('inf')


def test_autoattack_vs_art_comparison_counts_disagreements():
  from benchmarks import autoattack_vs_art  # pylint: disable=g-import-not-at-top
  ours = {'robust': np.array([1, 1, 0, 0, 1], bool), 'robust_accuracy': 0.6, 'wall_s': 10.0,
          'cpu_s': 5.0}
  art = {'robust': np.array([1, 0, 1, 0, 0], bool), 'robust_accuracy': 0.4, 'wall_s': 40.0,
         'cpu_s': 20.0}
  cmp = autoattack_vs_art.compare(ours, art)
  assert cmp == {'difference_points': pytest.approx(20.0), 'robust_only_ours': 2,
                 'robust_only_art': 1, 'speedup_wall': 4.0, 'speedup_cpu': 4.0}


def test_autoattack_stage_times_run_the_stages_of_the_one_graph(shared_data_dir):
  """--stage_times reruns our AutoAttack as four calls: the same subsets and seeds, so the same
  accuracy after each stage as autoattack_stages reports."""
  import eval_models  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from aad_tf.attacks import autoattack  # pylint: disable=g-import-not-at-top
  from benchmarks import autoattack_vs_art  # pylint: disable=g-import-not-at-top
  model = eval_models.adversarial_model(shared_data_dir)
  x, y = eval_models.first_test_examples(shared_data_dir, 40)
  budgets = dict(eps=0.15, num_steps=5, square_queries=30)
  _, robust = tf.function(lambda images, labels: autoattack.autoattack_stages(
      lambda z: model(z, training=False), images, labels, seed=autoattack_vs_art.ours_seed(3),
      **budgets))(tf.constant(x), tf.constant(y))
  stages = autoattack_vs_art.run_stages(model, x, y, seed=3, **budgets)
  assert list(stages) == list(autoattack.STAGES)
  # The same examples and seeds; one example may round differently on another subset size.
  after = np.array([stages[name]['accuracy_after'] for name in autoattack.STAGES])
  want = np.array([robust[name].numpy().mean() for name in autoattack.STAGES])
  np.testing.assert_allclose(after, want, atol=1.01 / len(x))
  assert after[-1] < robust['clean'].numpy().mean()  # the attacks did something
  examples = [stages[name]['examples'] for name in autoattack.STAGES]
  np.testing.assert_allclose(examples, [robust[name].numpy().sum()
                                        for name in ('clean', *autoattack.STAGES[:-1])], atol=1)
  assert all(t['cpu_s'] > 0 for t in stages.values())


def test_autoattack_vs_art_report_states_threads_ratios_and_stage_times():
  from benchmarks import autoattack_vs_art  # pylint: disable=g-import-not-at-top
  stages = ('clean', 'apgd_ce', 'apgd_t', 'fab_t', 'square')
  ours = {'robust_accuracy': 0.4, 'wall_s': 100.0, 'cpu_s': 90.0, 'max_linf': 0.3,
          'accuracy_after': dict(zip(stages, (0.97, 0.5, 0.42, 0.41, 0.4))),
          'robust': np.array([1, 0], bool)}
  art = {'robust_accuracy': 0.41, 'wall_s': 320.0, 'cpu_s': 300.0, 'max_linf': 0.3,
         'version': '1.20.1', 'robust': np.array([1, 1], bool)}
  result = {'num_examples': 2, 'eps': 0.3, 'model': 'm.keras', 'seed': 0, 'command': 'cmd',
            'threads': {'intra_op': 1, 'inter_op': 1}, 'ours': ours, 'art': art,
            'comparison': autoattack_vs_art.compare(ours, art),
            'stages': {'apgd_ce': {'examples': 485, 'cpu_s': 9.1, 'wall_s': 9.2,
                                   'accuracy_after': 0.51}}}
  text = autoattack_vs_art.to_markdown(result)
  assert 'TensorFlow threads: 1 intra-op, 1 inter-op.' in text
  assert '3.20x wall time, 3.33x CPU time' in text
  assert '| apgd_ce | 485 | 9.1 | 9.2 | 51.0 |' in text
  result['threads'] = {'intra_op': 0, 'inter_op': 0}
  del result['stages']
  text = autoattack_vs_art.to_markdown(result)
  assert 'TensorFlow threads: default (all cores).' in text and '--stage_times' not in text


def test_conv_gradient_benchmark_traces_each_setting_and_restores_the_switch(monkeypatch):
  """Both settings give the same input gradient; the switch is back as it was after tracing."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from benchmarks import conv_gradient  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(conv_gradient.SWITCH, raising=False)
  rng = np.random.default_rng(0)
  x = tf.constant(rng.uniform(size=[4, 28, 28, 1]), tf.float32)
  y = tf.constant([0, 1, 2, 3])
  build = conv_gradient.cases(x, y)['model_input_gradient']
  on, off = conv_gradient.traced(build, True), conv_gradient.traced(build, False)
  assert conv_gradient.SWITCH not in os.environ
  np.testing.assert_allclose(on().numpy(), off().numpy(), atol=1e-6)
  assert np.abs(on().numpy()).max() > 0


def test_thread_settings_read_the_environment_variables_the_runtime_reads(monkeypatch):
  from benchmarks import autoattack_vs_art  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('TF_NUM_INTRAOP_THREADS', '1')
  monkeypatch.setenv('TF_NUM_INTEROP_THREADS', '3')
  assert autoattack_vs_art.thread_settings() == {'intra_op': 1, 'inter_op': 3}
  monkeypatch.delenv('TF_NUM_INTRAOP_THREADS')
  monkeypatch.delenv('TF_NUM_INTEROP_THREADS')
  assert autoattack_vs_art.thread_settings() == {'intra_op': 0, 'inter_op': 0}


def test_windowed_square_benchmark_times_each_side_and_compares_the_attacks():
  """Every case runs and gives logits, and Square with and without the windowed passes is
  compared on the same images."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from aad_tf import models  # pylint: disable=g-import-not-at-top
  from benchmarks import windowed_square  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  x = tf.constant(np.random.default_rng(0).uniform(size=(6, 28, 28, 1)), tf.float32)
  cases = windowed_square.query_cases(model, x, [1, 4])
  assert sorted(cases) == ['forward', 'query_s1', 'query_s4']
  assert all(fn().shape == (6, 10) for fn in cases.values())
  times = windowed_square.time_cases(cases, repeats=1, rounds=1)
  assert all(t > 0 for t in times.values())
  y = tf.argmax(model(x), -1, output_type=tf.int32)
  result = windowed_square.run_square(model, x, y, queries=20, eps=0.3)
  assert result['identical_fraction'] >= 0.5
  assert result['windowed']['robust_accuracy'] == result['plain']['robust_accuracy']


def test_batchnorm_gap_reads_entries_and_tabulates_the_three_accuracies():
  from benchmarks import batchnorm_gap
  assert batchnorm_gap.parse_entry('runs/a@ckpt-500') == ('runs/a', 'runs/a/checkpoints/ckpt-500')
  assert batchnorm_gap.parse_entry('runs/a') == ('runs/a', None)
  with pytest.raises(ValueError, match='Empty run directory'):
    batchnorm_gap.parse_entry('@ckpt-5')
  row = {'run': 'aad', 'origin': 'checkpoints/ckpt-500 (step 500)', 'inference': 0.106,
         'batch_statistics': 0.394, 'recalibrated': 0.408,
         'layers': [{'name': 'a', 'max_mean_shift': 0.2, 'variance_ratio': [0.5, 1.0, 1.2]},
                    {'name': 'b', 'max_mean_shift': 1.3, 'variance_ratio': [0.8, 1.0, 2.3]}]}
  line = batchnorm_gap.table([row]).splitlines()[2]
  assert line == '| aad | checkpoints/ckpt-500 (step 500) | 10.6 | 39.4 | 40.8 | 1.30 | 0.50 - 2.30 |'
