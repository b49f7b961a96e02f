"""aad_tf.training: a resumed run uses the configured constant learning rate, not the checkpoint's;
initial_classifier is the run's step 0; mixed_precision 'auto' is resolved once, recorded in
config.json and kept on resume, and old config.json bools still load (issue 25)."""

import json

import numpy as np
import pytest

from aad_tf import data as data_lib
from aad_tf import defenses
from aad_tf import precision
from aad_tf import training


def test_resume_applies_the_configured_learning_rate(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.random((40, 28, 28, 1), dtype=np.float32)
  y = rng.integers(0, 10, 40).astype(np.int32)
  arrays = data_lib.Arrays(x_train=x, y_train=y, x_test=x, y_test=y)
  base = dict(model_dir=str(tmp_path), batch_size=20, defense=defenses.DefenseConfig(defense='none'),
              checkpoint_every=1)
  first = training.train(training.TrainConfig(train_steps=1, learning_rate=1e-3, **base), arrays)
  np.testing.assert_allclose(float(first.optimizer.learning_rate.numpy()), 1e-3, rtol=1e-6)
  resumed = training.train(training.TrainConfig(train_steps=2, learning_rate=1e-4, **base), arrays)
  assert int(resumed.optimizer.iterations.numpy()) == 2
  np.testing.assert_allclose(float(resumed.optimizer.learning_rate.numpy()), 1e-4, rtol=1e-6)


def test_initial_classifier_is_the_runs_step_zero(tmp_path, shared_data_dir):
  config = training.TrainConfig(
      model_dir=str(tmp_path / 'run'), data_dir=str(shared_data_dir), batch_size=8, train_steps=1,
      learning_rate=1e-9, defense=defenses.DefenseConfig(defense='none'))
  arrays = data_lib.load_arrays('mnist', data_dir=str(shared_data_dir))
  training.train(config, arrays)
  trained, _, step = training.restore_classifier(training.load_config(config.model_dir))
  initial, _ = training.initial_classifier(config)
  assert step == 1
  for a, b in zip(trained.get_weights(), initial.get_weights()):
    np.testing.assert_allclose(a, b, atol=1e-6)  # one Adam step of 1e-9


@pytest.mark.parametrize('saved, expected', [(True, 'bfloat16'), (False, 'float32'),
                                             ('bfloat16', 'bfloat16')])
def test_old_config_json_with_a_bool_mixed_precision_loads(tmp_path, saved, expected):
  config = training.TrainConfig(model_dir=str(tmp_path))
  payload = {**config.to_json(), 'mixed_precision': saved}
  loaded = training.config_from_json(payload)
  assert loaded.mixed_precision == expected
  assert loaded.to_json()['mixed_precision'] == expected
  # A resume compares it as a resumable field: never a configuration change.
  assert training.config_differences(payload, loaded) == {}


def test_unknown_mixed_precision_is_a_value_error(tmp_path):
  with pytest.raises(ValueError, match='mixed_precision must be one of'):
    training.TrainConfig(model_dir=str(tmp_path), mixed_precision='fp16')


def tiny_arrays():
  rng = np.random.default_rng(0)
  x = rng.random((40, 28, 28, 1), dtype=np.float32)
  y = rng.integers(0, 10, 40).astype(np.int32)
  return data_lib.Arrays(x_train=x, y_train=y, x_test=x, y_test=y)


def test_auto_precision_is_resolved_recorded_and_kept_on_resume(tmp_path, monkeypatch):
  machine = {'precision': 'bfloat16'}  # the hardware of the machine the run starts on
  resolved = []

  def fake_resolve(requested, **kwargs):
    requested = precision.normalize(requested)
    if requested == 'auto':
      resolved.append(machine['precision'])
      return machine['precision']
    return requested
  monkeypatch.setattr(precision, 'resolve', fake_resolve)
  base = dict(model_dir=str(tmp_path), batch_size=20, checkpoint_every=1, mixed_precision='auto',
              defense=defenses.DefenseConfig(defense='none'))
  model = training.train(training.TrainConfig(train_steps=1, **base), tiny_arrays())
  assert resolved == ['bfloat16']
  assert model.classifier.get_layer('conv1').compute_dtype == 'bfloat16'
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['mixed_precision'] == 'bfloat16'  # the choice, not 'auto'
  machine['precision'] = 'float32'  # resumed on a machine without bfloat16
  model = training.train(training.TrainConfig(train_steps=2, **base), tiny_arrays())
  assert resolved == ['bfloat16']  # not asked again
  assert int(model.optimizer.iterations.numpy()) == 2
  assert model.classifier.get_layer('conv1').compute_dtype == 'bfloat16'
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['mixed_precision'] == 'bfloat16'
  # A new run on that machine asks it.
  fresh = training.resolve_precision(training.TrainConfig(**{**base,
                                                             'model_dir': str(tmp_path / 'new')}))
  assert fresh.mixed_precision == 'float32' and resolved == ['bfloat16', 'float32']
