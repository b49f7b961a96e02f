"""Tests for aad_tf.overfitting: the catastrophic-overfitting guard."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf import checkpointing
from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import overfitting
from aad_tf import training

Check = overfitting.Check


def tiny_model(seed=0):
  keras.utils.set_random_seed(seed)
  inputs = keras.Input(shape=(6, 6, 1))
  h = keras.layers.Flatten()(inputs)
  model = keras.Model(inputs, keras.layers.Dense(3)(h))
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  model.optimizer.build(model.trainable_variables)
  return model


def held_out(n=12, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(size=(n, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


def guard_for(model, **kwargs):
  x, y = held_out()
  guard = overfitting.OverfitGuard(x, y, eps=0.1, pgd_steps=2, **kwargs)
  guard.set_model(model)
  return guard


def test_is_collapse():
  healthy = Check(100, fgsm_acc=0.6, pgd_acc=0.5)
  assert overfitting.is_collapse(healthy, Check(200, 0.9, 0.05), min_pgd_drop=0.2)
  # Divergence (both fall) and a small PGD dip are not catastrophic overfitting.
  assert not overfitting.is_collapse(healthy, Check(200, 0.3, 0.05), min_pgd_drop=0.2)
  assert not overfitting.is_collapse(healthy, Check(200, 0.9, 0.4), min_pgd_drop=0.2)
  assert not overfitting.is_collapse(healthy, Check(200, 0.6, 0.05), min_pgd_drop=0.2)


def test_guard_warns_on_synthetic_collapse(monkeypatch):
  warnings = []
  monkeypatch.setattr(overfitting.logging, 'warning', lambda *a: warnings.append(a[0] % a[1:]))
  model = tiny_model()
  guard = guard_for(model, mode='warn')
  for step, fgsm, pgd in ((100, 0.40, 0.30), (200, 0.55, 0.45), (300, 0.60, 0.50),
                          (400, 0.62, 0.41)):
    assert not guard.record(Check(step, fgsm, pgd))
  assert not guard.fired and guard.healthy.step == 300
  assert guard.record(Check(500, 0.93, 0.04))
  assert guard.fired and [c.step for c in guard.collapses] == [500]
  assert len(warnings) == 1 and 'step 500' in warnings[0] and '0.5000' in warnings[0]
  assert not model.stop_training
  summary = guard.summary()
  assert summary['fired'] and summary['collapse_steps'] == [500] and len(summary['checks']) == 5


def test_guard_stays_quiet_when_both_accuracies_fall():
  guard = guard_for(tiny_model(), mode='stop')
  guard.record(Check(100, 0.6, 0.5))
  assert not guard.record(Check(200, 0.2, 0.1))
  assert not guard.fired and not guard.model.stop_training


def test_guard_stop_mode_stops_training():
  guard = guard_for(tiny_model(), mode='stop')
  guard.record(Check(100, 0.6, 0.5))
  assert guard.record(Check(200, 0.95, 0.0))
  assert guard.model.stop_training


def test_guard_rollback_restores_checkpoint_before_the_healthy_check(tmp_path):
  model = tiny_model()
  directory = str(tmp_path / 'checkpoints')
  checkpointer = checkpointing.Checkpointer(directory, model, model.optimizer, max_to_keep=5)
  saved = {}
  for step in (2, 4, 6):
    model.optimizer.iterations.assign(step)
    for w in model.trainable_weights:
      w.assign(tf.fill(w.shape, float(step)))
    checkpointer.save()
    saved[step] = [w.numpy().copy() for w in model.trainable_weights]
  model.optimizer.iterations.assign(8)
  guard = guard_for(model, mode='rollback', checkpoint_dir=directory)
  guard.record(Check(5, 0.6, 0.5))  # healthy at step 5: newest checkpoint at or before is ckpt-4
  assert guard.record(Check(8, 0.9, 0.1))
  assert guard.rolled_back_to == 4 and model.stop_training
  assert int(model.optimizer.iterations.numpy()) == 4
  for expected, w in zip(saved[4], model.trainable_weights):
    np.testing.assert_array_equal(w.numpy(), expected)
  assert overfitting.checkpoint_at_or_before(directory, 1) is None


def test_measure_at_eps_zero_equals_clean_accuracy():
  model = tiny_model(seed=3)
  x, y = held_out(n=40, seed=5)
  guard = overfitting.OverfitGuard(x, y, eps=0.0, pgd_steps=3, batch_size=16)
  guard.set_model(model)
  clean = np.mean(np.argmax(model(x).numpy(), axis=-1) == y)
  fgsm, pgd = guard.measure()
  assert fgsm == pytest.approx(clean) and pgd == pytest.approx(clean)
  guard2 = overfitting.OverfitGuard(x, y, eps=0.5, pgd_steps=5, batch_size=16)
  guard2.set_model(model)
  fgsm, pgd = guard2.measure()
  assert 0.0 <= pgd <= clean and 0.0 <= fgsm <= clean


def test_guard_rejects_bad_arguments():
  x, y = held_out()
  with pytest.raises(ValueError, match='mode'):
    overfitting.OverfitGuard(x, y, eps=0.1, mode='off')
  with pytest.raises(ValueError, match='checkpoint_dir'):
    overfitting.OverfitGuard(x, y, eps=0.1, mode='rollback')
  with pytest.raises(ValueError, match='equal length'):
    overfitting.OverfitGuard(x, y[:3], eps=0.1)
  with pytest.raises(ValueError, match='min_pgd_drop'):
    overfitting.OverfitGuard(x, y, eps=0.1, min_pgd_drop=1.5)
  with pytest.raises(ValueError, match='num_examples'):
    overfitting.held_out(x, y, 13)


class ScriptedGuard(overfitting.OverfitGuard):
  """Real callback wiring; measurements replayed from a script (a synthetic collapse)."""

  def __init__(self, script, **kwargs):
    x, y = held_out(n=4)
    super().__init__(np.zeros((4, 28, 28, 1), np.float32), y, eps=0.3, **kwargs)
    self.script = list(script)

  def measure(self):
    return self.script.pop(0)


def tiny_mnist_arrays():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(200, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, 200).astype(np.int32)
  return data_lib.Arrays(x, y, x[:20], y[:20])


@pytest.mark.parametrize('mode', ['stop', 'rollback'])
def test_guard_ends_training_run(tmp_path, mode):
  # 200 examples / batch 50 = 4 steps per epoch; checks at steps 4 (healthy) and 8 (collapse).
  config = training.TrainConfig(
      model_dir=str(tmp_path / 'run'), batch_size=50, train_steps=16, checkpoint_every=1000,
      defense=defense_lib.DefenseConfig(defense='none'), keep_prob=1.0)
  guard = ScriptedGuard([(0.5, 0.6), (0.9, 0.1), (0.9, 0.1), (0.9, 0.1)], mode=mode,
                        checkpoint_dir=os.path.join(config.model_dir, 'checkpoints'))
  model = training.train(config, tiny_mnist_arrays(), callbacks=[guard])
  assert [c.step for c in guard.checks] == [4, 8]
  assert guard.fired
  step = int(model.optimizer.iterations.numpy())
  if mode == 'stop':
    assert step == 8
  else:
    assert step == 4 and guard.rolled_back_to == 4
    reference = training.build_classifier(config)[0]
    tf.train.Checkpoint(model=reference).restore(
        os.path.join(config.model_dir, 'checkpoints', 'ckpt-4')).expect_partial()
    for expected, w in zip(reference.weights, model.classifier.weights):
      np.testing.assert_array_equal(w.numpy(), expected.numpy())
