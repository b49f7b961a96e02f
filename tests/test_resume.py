"""Runs that survive faults: SIGKILL and resume, NaN stop, unwritable directories, full disks.

The kill-and-resume test runs tests/train_worker.py in subprocesses (op determinism is
process-wide; SIGKILL needs a process of its own): LeNet with dropout, pad-crop-flip augmentation
and Madry + AAD with random PGD starts, so every source of randomness must resume exactly.
"""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import checkpointing
from aad_tf import data as data_lib
from aad_tf import defense
from aad_tf import training

WORKER = pathlib.Path(__file__).resolve().parent / 'train_worker.py'
sys.path.insert(0, str(WORKER.parent))
import train_worker  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

TIMEOUT = 240


def start(spec):
  return subprocess.Popen([sys.executable, str(WORKER), json.dumps({'mode': 'train', **spec})],
                          env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc):
  try:
    out = proc.communicate(timeout=TIMEOUT)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, out[-4000:]


def test_killed_run_resumes_to_the_same_weights(tmp_path):
  steps = 12  # 5 steps per epoch: checkpoints 2, 4, 6, 8 are mid-epoch.
  common = {'train_steps': steps, 'checkpoint_every': 2, 'deterministic': True}
  reference = start({**common, 'model_dir': str(tmp_path / 'reference'),
                     'out': str(tmp_path / 'reference.npz')})
  killed_dir = tmp_path / 'killed'
  victim = start({**common, 'model_dir': str(killed_dir), 'out': str(tmp_path / 'unused.npz'),
                  'sleep': 0.5})
  try:
    deadline = time.time() + TIMEOUT
    while not (killed_dir / 'checkpoints' / 'ckpt-4.index').exists():
      assert victim.poll() is None, victim.communicate()[0][-4000:]
      assert time.time() < deadline, 'no checkpoint appeared'
      time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
  finally:
    if victim.poll() is None:
      victim.kill()
  assert victim.returncode == -signal.SIGKILL
  killed_at = int(tf.train.latest_checkpoint(str(killed_dir / 'checkpoints')).rsplit('-', 1)[1])
  assert 0 < killed_at < steps and killed_at % 5, killed_at  # Killed mid-run and mid-epoch.

  finish(start({**common, 'model_dir': str(killed_dir), 'out': str(tmp_path / 'resumed.npz')}))
  finish(reference)
  want, got = np.load(tmp_path / 'reference.npz'), np.load(tmp_path / 'resumed.npz')
  assert int(got['step']) == int(want['step']) == steps
  for key in want.files:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# In-process fault tests on a tiny run (no AAD, so they stay fast).

def tiny_config(model_dir, **overrides):
  kwargs = dict(
      model_dir=str(model_dir), dataset='mnist', model='lenet', keep_prob=1.0, batch_size=8,
      train_steps=5, optimizer='sgd', learning_rate=0.01, seed=1, checkpoint_every=1,
      keep_checkpoints=10, log_every=1,
      defense=defense.DefenseConfig(defense='none'))
  kwargs.update(overrides)
  return training.TrainConfig(**kwargs)


def restored_weights(config, path):
  classifier, _ = training.build_classifier(config)
  tf.train.Checkpoint(model=classifier).restore(path).expect_partial()
  return [v.numpy() for v in classifier.weights]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  # A learning rate of 1e12 makes step 2's logits overflow: its loss is NaN.
  config = tiny_config(tmp_path / 'run', learning_rate=1e12)
  with pytest.raises(checkpointing.NonFiniteLossError,
                     match=r'loss became (nan|inf) at step 2.*ckpt-1.*is kept'):
    training.train(config, train_worker.tiny_arrays(data_lib))
  ckpt_dir = tmp_path / 'run' / 'checkpoints'
  assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith('ckpt-1')
  assert not list(ckpt_dir.glob('ckpt-2*'))
  assert all(np.isfinite(w).all() for w in restored_weights(config, str(ckpt_dir / 'ckpt-1')))


def test_nan_weights_are_never_checkpointed(tmp_path):
  arrays = train_worker.tiny_arrays(data_lib)
  config = tiny_config(tmp_path / 'run')
  # A NaN image in step 3 makes the weights NaN; the fused conv + ReLU keeps that step's loss
  # finite on CPU, so it is the check before saving that stops the run.
  flat, _ = data_lib.batch_indices(arrays.num_train, batch_size=8, seed=config.seed,
                                   start_step=2, num_steps=1)
  x = arrays.x_train.copy()
  x[flat[0]] = np.nan
  poisoned = data_lib.Arrays(x, arrays.y_train, arrays.x_test, arrays.y_test)
  with pytest.raises(checkpointing.NonFiniteLossError, match=r'NaN or Inf by step 3.*ckpt-2'):
    training.train(config, poisoned)
  ckpt_dir = tmp_path / 'run' / 'checkpoints'
  assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith('ckpt-2')
  assert not list(ckpt_dir.glob('ckpt-3*'))
  assert all(np.isfinite(w).all() for w in restored_weights(config, str(ckpt_dir / 'ckpt-2')))


def test_unwritable_model_dir_fails_at_once(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  config = tiny_config(blocker / 'run')
  started = time.time()
  with pytest.raises(checkpointing.CheckpointError, match='not writable'):
    training.train(config, train_worker.tiny_arrays(data_lib))
  assert time.time() - started < 10  # Before any model is built or step is run.


def test_full_disk_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
  config = tiny_config(tmp_path / 'run')
  arrays = train_worker.tiny_arrays(data_lib)
  save = tf.train.CheckpointManager.save

  def save_until_disk_full(manager, checkpoint_number=None, **kwargs):
    if checkpoint_number is not None and checkpoint_number >= 3:
      # What a full disk leaves: a partly written temporary file, then ENOSPC.
      partial = os.path.join(manager.directory, f'ckpt-{checkpoint_number}_temp')
      os.makedirs(partial, exist_ok=True)
      with open(os.path.join(partial, 'part-00000-of-00001.data-00000-of-00001'), 'wb') as f:
        f.write(b'\0' * 100)
      raise OSError(errno.ENOSPC, 'No space left on device')
    return save(manager, checkpoint_number=checkpoint_number, **kwargs)

  monkeypatch.setattr(tf.train.CheckpointManager, 'save', save_until_disk_full)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'(?s)step 3.*disk may be full.*still .*ckpt-2'):
    training.train(config, arrays)
  monkeypatch.undo()
  ckpt_dir = str(tmp_path / 'run' / 'checkpoints')
  assert tf.train.latest_checkpoint(ckpt_dir).endswith('ckpt-2')
  assert all(np.isfinite(w).all() for w in restored_weights(config, os.path.join(ckpt_dir,
                                                                                 'ckpt-2')))
  # Re-running once space is back resumes from step 2 and finishes.
  model = training.train(config, arrays)
  assert int(model.optimizer.iterations.numpy()) == 5
  assert tf.train.latest_checkpoint(ckpt_dir).endswith('ckpt-5')
