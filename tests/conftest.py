"""Shared pytest setup: quiet TensorFlow, and the path to shared/data."""

import os
import pathlib

# Before any test module imports TensorFlow: hide its C++ INFO and WARNING lines.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top

# shared/ sits beside the repository checkout (…/main/tests/conftest.py -> …/shared/data).
SHARED_DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data_dir() -> pathlib.Path:
  """The directory holding mnist.npz and cifar10.npz; skips the test if it is absent."""
  if not SHARED_DATA_DIR.is_dir():
    pytest.skip(f'shared data directory {SHARED_DATA_DIR} not found')
  return SHARED_DATA_DIR


@pytest.fixture(scope='session')
def mnist_arrays(shared_data_dir):
  """Real MNIST as aad_tf.data.Arrays (loaded once per session)."""
  from aad_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  return data_lib.load_arrays('mnist', data_dir=str(shared_data_dir), source='npz')


@pytest.fixture(scope='session')
def trained_lenet(mnist_arrays):
  """An undefended LeNet trained for 150 steps of batch 50 on real MNIST (~95% clean).

  Returns (classifier, x_test [200, 28, 28, 1], y_test [200]). Shared by the attack tests so the
  session trains it once (about 10 s on 2 cores).
  """
  import keras  # pylint: disable=g-import-not-at-top
  from aad_tf import models  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  classifier = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  classifier.compile(optimizer=keras.optimizers.Adam(1e-3),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  classifier.fit(mnist_arrays.x_train[:7500], mnist_arrays.y_train[:7500], batch_size=50,
                 epochs=1, verbose=0, shuffle=False)
  return classifier, mnist_arrays.x_test[:200], mnist_arrays.y_test[:200]
