"""aad_tf.schedules: the cyclic rate's shape, and the optimizer that TrainConfig builds from it."""

import keras
import numpy as np
import pytest

from aad_tf import data as data_lib
from aad_tf import defenses
from aad_tf import schedules
from aad_tf import training


def test_cyclic_rises_to_the_peak_then_falls_to_zero():
  schedule = schedules.Cyclic(0.2, total_steps=100, peak_fraction=0.4)
  rates = np.array([float(schedule(step)) for step in range(100)])
  # Step k has the rate at the middle of its interval, (k + 0.5) / 100 of the run.
  expected = 0.2 * np.minimum((np.arange(100) + 0.5) / 40, (100 - np.arange(100) - 0.5) / 60)
  np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)
  assert rates[0] > 0 and rates.argmax() in (39, 40) and rates[-1] < 0.002
  assert float(schedule(150)) == 0.0  # past the end (a run resumed with a larger budget)
  assert schedules.Cyclic.from_config(schedule.get_config()).get_config() == schedule.get_config()


@pytest.mark.parametrize('kwargs', [dict(peak=0.0, total_steps=10), dict(peak=1, total_steps=0),
                                    dict(peak=1, total_steps=10, peak_fraction=1.0)])
def test_cyclic_rejects_bad_settings(kwargs):
  with pytest.raises(ValueError):
    schedules.Cyclic(**kwargs)


def test_train_config_builds_the_schedule_width_and_weight_decay(tmp_path):
  config = training.TrainConfig(model_dir=str(tmp_path), dataset='cifar10', model='resnet9',
                                model_width=4, optimizer='sgd', learning_rate=0.2,
                                lr_schedule='cyclic', weight_decay=5e-4, train_steps=50)
  optimizer = training.build_optimizer(config, num_train=1000)
  # At step 0 of 50 the cyclic rate is 0.2 * (0.5 / 50) / 0.4, not the constant 0.2.
  assert float(optimizer.learning_rate) == pytest.approx(0.005)
  assert optimizer.weight_decay == pytest.approx(5e-4)
  classifier, _ = training.build_classifier(config)
  assert classifier.get_layer('prep_conv').filters == 4  # width 4, not the default 64
  # A step with weight decay shrinks a weight whose gradient is zero; without, it stays.
  for decay, shrinks in [(5e-4, True), (0.0, False)]:
    cfg = training.TrainConfig(model_dir=str(tmp_path), optimizer='sgd', learning_rate=0.1,
                               momentum=0.0, weight_decay=decay)
    v = keras.Variable(np.ones(3, np.float32))
    opt = training.build_optimizer(cfg, num_train=100)
    opt.apply([keras.ops.zeros(3)], [v])
    assert (float(v.numpy()[0]) < 1.0) == shrinks
  step_config = training.TrainConfig(model_dir=str(tmp_path), learning_rate=0.1)
  assert training.build_optimizer(step_config).learning_rate.numpy() == pytest.approx(0.1)


@pytest.mark.parametrize('kwargs, message', [
    (dict(model='lenet', model_width=8), 'takes no model_width'),
    (dict(model='resnet9', dataset='cifar10', model_width=0), 'model_width must be'),
    (dict(lr_schedule='cosine'), 'lr_schedule must be one of'),
    (dict(weight_decay=-1.0), 'weight_decay must be')])
def test_train_config_rejects_bad_recipe_fields(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    training.TrainConfig(model_dir=str(tmp_path), **kwargs)


def test_a_cyclic_run_resumes_on_its_schedule(tmp_path):
  """A resume must not try to set the scheduled rate (Keras refuses) and continues the cycle."""
  rng = np.random.default_rng(0)
  x = rng.random((40, 28, 28, 1), dtype=np.float32)
  y = rng.integers(0, 10, 40).astype(np.int32)
  arrays = data_lib.Arrays(x_train=x, y_train=y, x_test=x, y_test=y)
  base = dict(model_dir=str(tmp_path), optimizer='sgd', learning_rate=0.05, lr_schedule='cyclic',
              batch_size=20, checkpoint_every=1, defense=defenses.DefenseConfig(defense='none'))
  training.train(training.TrainConfig(train_steps=2, **base), arrays)
  resumed = training.train(training.TrainConfig(train_steps=4, **base), arrays)
  assert int(resumed.optimizer.iterations.numpy()) == 4
  # The rate after 4 steps of a 4-step cycle: past its end, 0 (a constant rate would be 0.05).
  assert float(resumed.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-7)
