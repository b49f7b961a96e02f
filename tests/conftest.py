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
