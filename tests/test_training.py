"""aad_tf.training: a resumed run uses the configured constant learning rate, not the checkpoint's;
initial_classifier is the run's step 0."""

import numpy as np

from aad_tf import data as data_lib
from aad_tf import defenses
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
