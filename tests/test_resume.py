"""Runs that survive faults: SIGKILL and resume, NaN stop, unwritable directories, full disks.

The kill-and-resume test runs tests/train_worker.py in subprocesses (op determinism is
process-wide; SIGKILL needs a process of its own): LeNet with dropout, pad-crop-flip augmentation
and Madry + AAD with random PGD starts, so every source of randomness must resume exactly.
"""

import dataclasses
import errno
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import checkpointing
from aad_tf import data as data_lib
from aad_tf import defenses
from aad_tf import models
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
      defense=defenses.DefenseConfig(defense='none'))
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
  # A NaN image in step 3 makes the weights NaN. Whether that step's loss is NaN too depends on
  # the CPU's fused kernels (oneDNN's conv + ReLU can turn a NaN activation into 0), so either
  # guard may stop the run; what must hold is the behaviour: the run stops, ckpt-2 stays the
  # latest, and no NaN is ever checkpointed. Each guard has its own deterministic test below.
  flat, _ = data_lib.batch_indices(arrays.num_train, batch_size=8, seed=config.seed,
                                   start_step=2, num_steps=1)
  x = arrays.x_train.copy()
  x[flat[0]] = np.nan
  poisoned = data_lib.Arrays(x, arrays.y_train, arrays.x_test, arrays.y_test)
  with pytest.raises(checkpointing.NonFiniteLossError, match=r'ckpt-2'):
    training.train(config, poisoned)
  ckpt_dir = tmp_path / 'run' / 'checkpoints'
  assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith('ckpt-2')
  assert not list(ckpt_dir.glob('ckpt-3*'))
  for _, path in checkpointing.checkpoints_newest_first(str(ckpt_dir)):
    assert all(np.isfinite(w).all() for w in restored_weights(config, path)), path


def poison_train_step(monkeypatch, *, at_step, target):
  """Makes AADModel's train step produce a NaN at optimizer step `at_step`, in graph, exactly.

  target 'loss': the logged loss is NaN, the weights stay finite (the loss guard's case).
  target 'weights': the first kernel becomes NaN after the update, the loss stays finite (the
  case of a fused kernel that hides a NaN activation; only the check before saving sees it).
  """
  original = defenses.AADModel.train_step

  def train_step(self, data):
    logs = dict(original(self, data))
    hit = tf.equal(self.optimizer.iterations, at_step)
    if target == 'loss':
      logs['loss'] = tf.where(hit, tf.constant(np.nan, logs['loss'].dtype), logs['loss'])
    else:
      kernel = self.classifier.trainable_variables[0]
      kernel.assign(tf.where(hit, tf.fill(tf.shape(kernel), np.nan), kernel))
    return logs

  monkeypatch.setattr(defenses.AADModel, 'train_step', train_step)


def test_loss_guard_stops_on_a_nan_loss_with_finite_weights(tmp_path, monkeypatch):
  poison_train_step(monkeypatch, at_step=3, target='loss')
  config = tiny_config(tmp_path / 'run')
  with pytest.raises(checkpointing.NonFiniteLossError) as raised:
    training.train(config, train_worker.tiny_arrays(data_lib))
  assert not isinstance(raised.value, checkpointing.NonFiniteWeightsError)
  assert re.search(r'^loss became nan at step 3 .*ckpt-2.*is kept', str(raised.value))
  ckpt_dir = tmp_path / 'run' / 'checkpoints'
  assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith('ckpt-2')
  assert not list(ckpt_dir.glob('ckpt-3*'))


def test_weights_guard_refuses_to_save_nan_weights_behind_a_finite_loss(tmp_path, monkeypatch):
  poison_train_step(monkeypatch, at_step=3, target='weights')
  config = tiny_config(tmp_path / 'run')
  with pytest.raises(checkpointing.NonFiniteWeightsError,
                     match=r'became NaN or Inf by step 3; stopping without saving.*ckpt-2'):
    training.train(config, train_worker.tiny_arrays(data_lib))
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


# ---------------------------------------------------------------------------------------------
# Issue 13: corrupt checkpoints, changed configurations, nothing written before validation.

def truncate(path):
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.truncate(size // 2)


def flip_bits(path):
  """Flips one bit every 4 KiB: every tensor of the file fails its checksum."""
  data = bytearray(pathlib.Path(path).read_bytes())
  for i in range(len(data) // 2 % 4096, len(data), 4096):
    data[i] ^= 0x10
  pathlib.Path(path).write_bytes(bytes(data))


def data_file(ckpt_dir, step):
  return str(ckpt_dir / f'ckpt-{step}.data-00000-of-00001')


@pytest.mark.parametrize('damage, reason', [(truncate, 'Read less bytes than requested'),
                                            (flip_bits, 'Checksum does not match')])
def test_corrupt_latest_checkpoint_falls_back_and_is_kept(tmp_path, caplog, damage, reason):
  arrays = train_worker.tiny_arrays(data_lib)
  config = tiny_config(tmp_path / 'run', train_steps=4, checkpoint_every=2)
  training.train(config, arrays)
  ckpt_dir = tmp_path / 'run' / 'checkpoints'
  damage(data_file(ckpt_dir, 4))
  damaged = pathlib.Path(data_file(ckpt_dir, 4)).read_bytes()
  caplog.set_level('INFO', logger='absl')
  model = training.train(dataclasses.replace(config, train_steps=6), arrays)
  assert int(model.optimizer.iterations.numpy()) == 6
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  line = next(m for m in warnings if m.startswith('Using ckpt-2'))
  assert 'ckpt-4 is corrupt' in line and reason in line and 'different model' not in line
  assert '\n' not in line
  # Never deleted: moved aside, byte for byte, so that neither rotation nor the new save at
  # step 4 can overwrite it.
  aside = list((ckpt_dir / 'corrupt').glob('*/ckpt-4.data-00000-of-00001'))
  assert len(aside) == 1 and aside[0].read_bytes() == damaged
  assert (aside[0].parent / 'ckpt-4.index').exists()
  assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith('ckpt-6')
  assert all(np.isfinite(w).all() for w in restored_weights(config, str(ckpt_dir / 'ckpt-4')))


def test_every_checkpoint_corrupt_is_reported_as_corrupt(tmp_path):
  arrays = train_worker.tiny_arrays(data_lib)
  config = tiny_config(tmp_path / 'run', train_steps=4, checkpoint_every=2)
  training.train(config, arrays)
  ckpt_dir = tmp_path / 'run' / 'checkpoints'
  flip_bits(data_file(ckpt_dir, 4))
  truncate(data_file(ckpt_dir, 2))
  with pytest.raises(checkpointing.CheckpointError) as raised:
    training.train(dataclasses.replace(config, train_steps=6), arrays)
  message = str(raised.value)
  assert re.search(r'ckpt-4 is corrupt \([^;]*Checksum does not match', message), message
  assert re.search(r'ckpt-2 is corrupt \([^;]*Read less bytes', message), message
  assert 'different model' not in message and '\n' not in message
  assert sorted(p.name for p in ckpt_dir.glob('ckpt-*.index')) == ['ckpt-2.index',
                                                                   'ckpt-4.index']


def test_checkpoint_of_another_model_is_not_called_corrupt(tmp_path):
  arrays = train_worker.tiny_arrays(data_lib)
  config = tiny_config(tmp_path / 'run', train_steps=2, checkpoint_every=2)
  training.train(config, arrays)
  (tmp_path / 'run' / 'config.json').unlink()  # hide the config guard: the checkpoint decides
  other = dataclasses.replace(config, model='resnet9', dataset='cifar10', train_steps=4)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'ckpt-2 is written by a different model or optimizer'):
    training.train(other, train_worker.tiny_arrays(data_lib, shape=(32, 32, 3)))


def test_resume_refuses_a_changed_defense_and_leaves_the_run_untouched(tmp_path):
  arrays = train_worker.tiny_arrays(data_lib)
  config = tiny_config(tmp_path / 'run', train_steps=2, checkpoint_every=2)
  training.train(config, arrays)
  run = tmp_path / 'run'
  before = {p: p.read_bytes() for p in run.rglob('*') if p.is_file()}
  changed = dataclasses.replace(
      config, train_steps=4, seed=5,
      defense=defenses.DefenseConfig(defense='madry', attack=defenses.AttackConfig(num_steps=1)))
  started = time.time()
  with pytest.raises(training.ConfigChangeError) as raised:
    training.train(changed, arrays)
  assert time.time() - started < 5  # before building anything
  message = str(raised.value)
  assert '\n' not in message
  for field in ("defense.defense ('none' -> 'madry')", 'defense.attack.num_steps', 'seed (1 -> 5)'):
    assert field in message
  assert 'train_steps' not in message  # a longer budget is a resume, not a change
  assert '--allow_config_change' in message
  assert {p: p.read_bytes() for p in run.rglob('*') if p.is_file()} == before

  # Allowed explicitly: it trains on, and the run records what changed, from what, at which step.
  model = training.train(changed, arrays, allow_config_change=True)
  assert int(model.optimizer.iterations.numpy()) == 4
  history = json.loads((run / training.CONFIG_CHANGES).read_text())
  assert len(history) == 1 and history[0]['step'] == 2
  assert history[0]['changes']['defense.defense'] == {'from': 'none', 'to': 'madry'}
  assert history[0]['changes']['seed'] == {'from': 1, 'to': 5}
  assert json.loads((run / 'config.json').read_text())['defense']['defense'] == 'madry'


def test_resume_with_a_longer_budget_is_no_change(tmp_path, caplog):
  arrays = train_worker.tiny_arrays(data_lib)
  config = tiny_config(tmp_path / 'run', train_steps=2, checkpoint_every=2,
                       learning_rate=0.001)
  training.train(config, arrays)
  caplog.set_level('INFO', logger='absl')
  model = training.train(dataclasses.replace(config, train_steps=3, checkpoint_every=1), arrays)
  assert int(model.optimizer.iterations.numpy()) == 3
  assert not (tmp_path / 'run' / training.CONFIG_CHANGES).exists()
  # 0.001 is not exactly representable in the float32 variable: no 'replaced' line for it.
  assert not [r for r in caplog.records if 'Learning rate' in r.getMessage()]
  training.train(dataclasses.replace(config, train_steps=4, learning_rate=0.002), arrays)
  assert any('Learning rate 0.001 from the checkpoint replaced by the configured 0.002' in
             r.getMessage() for r in caplog.records)


def test_resume_of_a_run_whose_config_json_predates_eval_eps(tmp_path):
  """config.json written before it held eval_eps and gradcam_layer (issue 16): resuming it with
  an eval eps set is no configuration change, and its config.json gains both fields."""
  arrays = train_worker.tiny_arrays(data_lib)
  config = tiny_config(tmp_path / 'run', train_steps=2, checkpoint_every=2)
  training.train(config, arrays)
  path = tmp_path / 'run' / 'config.json'
  old = json.loads(path.read_text())
  for field in ('eval_eps', 'gradcam_layer'):
    del old[field]
  path.write_text(json.dumps(old))
  resumed = dataclasses.replace(config, train_steps=3, eval_eps=0.3)
  assert training.check_resume(resumed) == {}
  # Compared as saved when the old config no longer validates: the new fields still are no change.
  assert training.config_differences({**old, 'optimizer': 'gone'}, resumed) == {
      'optimizer': ('gone', 'sgd')}
  model = training.train(resumed, arrays)
  assert int(model.optimizer.iterations.numpy()) == 3
  assert not (tmp_path / 'run' / training.CONFIG_CHANGES).exists()
  saved = json.loads(path.read_text())
  assert saved['eval_eps'] == 0.3
  assert saved['gradcam_layer'] == models.get_spec('lenet').gradcam_layer


def test_failed_validation_leaves_no_run_directory_behind(tmp_path, monkeypatch):
  # Read-only parent (simulated: the tests may run as root, who may write anywhere).
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda path, mode: (
      False if os.path.abspath(path) == str(tmp_path) else real_access(path, mode)))
  with pytest.raises(checkpointing.CheckpointError, match='not writable: cannot create it in'):
    training.train(tiny_config(tmp_path / 'run'), train_worker.tiny_arrays(data_lib))
  monkeypatch.undo()
  assert not (tmp_path / 'run').exists()
  # A model that cannot be built (no such weights file) fails before the directory appears.
  config = tiny_config(tmp_path / 'run2', model='inception_v3', dataset='imagenet',
                       pretrained_weights=str(tmp_path / 'missing.h5'))
  with pytest.raises(Exception):
    training.train(config)
  assert not (tmp_path / 'run2').exists()


def test_plain_progress_lines_off_a_terminal(tmp_path, caplog, capsys):
  caplog.set_level('INFO', logger='absl')
  config = tiny_config(tmp_path / 'run', train_steps=25, log_every=10, checkpoint_every=25)
  training.train(config, train_worker.tiny_arrays(data_lib))  # pytest's stdout is no terminal
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('step ')]
  assert [line.split(':')[0] for line in lines] == ['step 10/25', 'step 20/25', 'step 25/25']
  assert re.fullmatch(r'step 10/25: loss [\d.]+, class_loss [\d.]+, clean_acc [\d.]+; '
                      r'[\d.]+ steps/s, ETA \d+s', lines[0]), lines[0]
  out = capsys.readouterr()
  assert '\x08' not in out.out + out.err and '\x1b[' not in out.out + out.err


def test_existing_read_only_model_dir_fails_at_once_and_changes_nothing(tmp_path, monkeypatch):
  arrays = train_worker.tiny_arrays(data_lib)
  config = tiny_config(tmp_path / 'run', train_steps=2, checkpoint_every=2)
  training.train(config, arrays)
  run = tmp_path / 'run'
  before = {p: p.read_bytes() for p in run.rglob('*') if p.is_file()}
  gfile = tf.io.gfile.GFile

  def read_only(path, mode='r'):  # what a read-only mount answers (root ignores chmod)
    if 'w' in mode or 'a' in mode:
      raise tf.errors.PermissionDeniedError(None, None, f'{path}; Read-only file system')
    return gfile(path, mode)

  monkeypatch.setattr(tf.io.gfile, 'GFile', read_only)
  started = time.time()
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'^Directory .*run is not writable: .*Read-only file system\.$'):
    training.train(dataclasses.replace(config, train_steps=4), arrays)
  assert time.time() - started < 5
  monkeypatch.undo()
  assert {p: p.read_bytes() for p in run.rglob('*') if p.is_file()} == before
