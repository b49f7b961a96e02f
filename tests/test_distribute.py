"""Tests of aad_tf.distribute: strategies, per-replica input, chief-only writing, equal results.

The multi-device and multi-worker tests run tests/train_worker.py in fresh processes (logical
devices and TF_CONFIG must precede any TensorFlow op).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import distribute

WORKER = pathlib.Path(__file__).resolve().parent / 'train_worker.py'
TIMEOUT = 240


def run_worker(spec, env=None):
  return subprocess.Popen([sys.executable, str(WORKER), json.dumps(spec)],
                          env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_all(procs):
  try:
    outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  finally:
    for p in procs:  # A worker stuck in a collective would otherwise outlive the test.
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return outputs


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.parametrize('name, expected', [
    ('GPU:1', '/device:GPU:1'), ('gpu:0', '/device:GPU:0'), ('/cpu:2', '/device:CPU:2'),
    ('/job:localhost/replica:0/task:0/device:GPU:3', '/device:GPU:3')])
def test_normalize_device(name, expected):
  assert distribute.normalize_device(name) == expected


@pytest.mark.parametrize('name', ['GPU', 'gpu:x', 'disk:0', ''])
def test_normalize_device_rejects(name):
  with pytest.raises(ValueError, match='device'):
    distribute.normalize_device(name)


def test_tf_config_cluster_size():
  cluster = {'cluster': {'chief': ['a:1'], 'worker': ['b:1', 'c:1'], 'ps': ['d:1']},
             'task': {'type': 'worker', 'index': 0}}
  assert distribute.tf_config_cluster_size({'TF_CONFIG': json.dumps(cluster)}) == 3
  assert distribute.tf_config_cluster_size({}) == 0
  with pytest.raises(ValueError, match='TF_CONFIG'):
    distribute.tf_config_cluster_size({'TF_CONFIG': '{not json'})


def test_default_strategy_is_chief_and_single():
  strategy = distribute.create_strategy()  # No GPU here: TensorFlow's default strategy.
  assert strategy.num_replicas_in_sync == 1
  assert distribute.is_chief(strategy)
  assert 'replica' in distribute.describe(strategy)


def test_unknown_device_is_an_error():
  with pytest.raises(ValueError, match='Unknown devices'):
    distribute.create_strategy(['gpu:7', 'gpu:8'])


def test_check_global_batch():
  two = types.SimpleNamespace(num_replicas_in_sync=2)
  assert distribute.check_global_batch(two, 10) == 5
  with pytest.raises(ValueError, match='multiple of 2'):
    distribute.check_global_batch(two, 7)


def test_replica_slices_match_numpy():
  x = np.arange(3 * 8 * 2, dtype=np.float32).reshape(3, 8, 2)  # 3 global batches of 8
  y = np.arange(3 * 8).reshape(3, 8)
  dataset = tf.data.Dataset.from_tensor_slices((x, y))
  # Worker 1 of 2, each with 2 of the 4 replicas: replicas 2 and 3, 2 rows each.
  got = list(distribute.replica_slices(dataset, num_replicas=4, first=2, count=2))
  assert len(got) == 6
  for step in range(3):
    for local in range(2):
      rows = slice((2 + local) * 2, (3 + local) * 2)
      np.testing.assert_array_equal(got[2 * step + local][0], x[step, rows])
      np.testing.assert_array_equal(got[2 * step + local][1], y[step, rows])


def test_resolve_jit_compile():
  one = types.SimpleNamespace(num_replicas_in_sync=1)
  two = types.SimpleNamespace(num_replicas_in_sync=2)
  assert distribute.resolve_jit_compile(None, one, False) is None
  assert distribute.resolve_jit_compile(False, one, False) is False
  assert distribute.resolve_jit_compile(True, one, False) is True
  assert distribute.resolve_jit_compile(True, two, False) is False
  assert distribute.resolve_jit_compile(True, one, True) is False


@pytest.mark.parametrize('gpus, warned', [([], True), (['GPU:0'], False)])
def test_jit_compile_without_a_gpu_warns_once(monkeypatch, gpus, warned):
  warnings = []
  monkeypatch.setattr(distribute.logging, 'warning', lambda msg, *a: warnings.append(msg % a))
  monkeypatch.setattr(distribute.tf.config, 'list_physical_devices',
                      lambda kind=None: list(gpus) if kind == 'GPU' else [])
  monkeypatch.setattr(distribute, '_XLA_ON_CPU_WARNED', [])
  one = types.SimpleNamespace(num_replicas_in_sync=1)
  for _ in range(3):  # requested by every model a process builds: one line, not three
    assert distribute.resolve_jit_compile(True, one, False) is True
  assert distribute.resolve_jit_compile(None, one, False) is None
  assert len(warnings) == (1 if warned else 0)
  if warned:
    assert 'XLA is for GPUs' in warnings[0] and '7x slower' in warnings[0]


def test_jit_compile_help_says_xla_is_for_gpus():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from trainers import main  # pylint: disable=g-import-not-at-top
  if 'jit_compile' not in flags.FLAGS:
    main.define_flags()
  assert 'XLA is for GPUs' in ' '.join(flags.FLAGS['jit_compile'].help.split())


def test_aad_step_on_two_devices_equals_one(tmp_path):
  """One AAD step (ResNet9 with batch norm) on 2 logical CPUs equals the 1-device step."""
  out = tmp_path / 'weights.npz'
  wait_all([run_worker({'mode': 'mirrored_step', 'out': str(out)})])
  r = np.load(out)
  assert int(r['replicas_one']) == 1 and int(r['replicas_two']) == 2
  np.testing.assert_array_equal(r['init_one'], r['init_two'])
  np.testing.assert_array_equal(r['init_stats_one'], r['init_stats_two'])
  update = np.abs(r['one'] - r['init_one']).max()
  assert update > 1e-3  # The step moved the weights far more than the tolerance below.
  np.testing.assert_allclose(r['two'], r['one'], rtol=0, atol=1e-6)
  # Batch-norm moving statistics (not scaled by the learning rate) moved by O(1): synchronized
  # batch norm gives the global-batch statistics up to float32 rounding.
  assert np.abs(r['stats_one'] - r['init_stats_one']).max() > 0.1
  np.testing.assert_allclose(r['stats_two'], r['stats_one'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(r['loss_two'], r['loss_one'], rtol=1e-6)


def test_two_workers_train_to_identical_weights(tmp_path):
  """Two MultiWorkerMirroredStrategy workers on 127.0.0.1: same weights; only the chief writes."""
  ports = [free_port(), free_port()]
  model_dir = tmp_path / 'run'
  scratch = tmp_path / 'scratch'
  scratch.mkdir()
  procs = []
  for index in range(2):
    tf_config = {'cluster': {'worker': [f'127.0.0.1:{p}' for p in ports]},
                 'task': {'type': 'worker', 'index': index}}
    spec = {'mode': 'train', 'model_dir': str(model_dir), 'train_steps': 3,
            'checkpoint_every': 2, 'out': str(tmp_path / f'worker{index}.npz')}
    procs.append(run_worker(spec, env={'TF_CONFIG': json.dumps(tf_config),
                                       'TMPDIR': str(scratch)}))
  wait_all(procs)
  w0, w1 = np.load(tmp_path / 'worker0.npz'), np.load(tmp_path / 'worker1.npz')
  assert bool(w0['chief']) and not bool(w1['chief'])
  assert int(w0['step']) == int(w1['step']) == 3
  for key in w0.files:
    if key.startswith('w'):
      np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
  # The chief wrote the run; the other worker's scratch checkpoints are gone.
  kept = sorted(p.name for p in (model_dir / 'checkpoints').iterdir())
  assert 'ckpt-2.index' in kept and 'ckpt-3.index' in kept
  assert (model_dir / 'config.json').exists()
  assert not list(scratch.glob('aad_worker*'))


@pytest.mark.slow  # ~25 s more on 2 cores; the two tests above cover the distribution itself
def test_main_trains_exports_and_evaluates_on_two_devices(tmp_path, shared_data_dir):
  """trainers.main --devices=cpu:0,cpu:1: mirrored variables through checkpoint, export, eval."""
  model_dir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'trainers.main', '--flagfile=flags/mnist_madry_aad.cfg',
       f'--data_dir={shared_data_dir}', f'--model_dir={model_dir}', '--devices=cpu:0,cpu:1',
       '--train_steps=2', '--batch_size=8', '--train_num_steps=1', '--eval_examples=16',
       '--eval_attacks=clean', '--checkpoint_every=1', '--summary_images=0'],
      cwd=WORKER.parents[1], env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
      capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 0, result.stderr[-4000:]
  assert 'MirroredStrategy with 2 replica(s)' in result.stderr
  for path in ('checkpoints/ckpt-2.index', 'export/saved_model/saved_model.pb',
               'export/model.keras', 'eval.json'):
    assert (model_dir / path).exists(), path
  assert json.loads((model_dir / 'eval.json').read_text())['num_examples'] == 16



def test_enable_determinism_turns_off_grappler(monkeypatch):
  # Op determinism alone left compiled AAD steps non-repeatable (tools/README.md, Determinism).
  # Op determinism is process-wide and cannot be undone, so it is not switched on here.
  monkeypatch.setattr(tf.config.experimental, 'enable_op_determinism', lambda: None)
  before = tf.config.optimizer.get_experimental_options().get('disable_meta_optimizer', False)
  try:
    distribute.enable_determinism(0)
    assert tf.config.optimizer.get_experimental_options()['disable_meta_optimizer'] is True
  finally:
    tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': before})
