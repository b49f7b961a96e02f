"""Tiny MNIST-shaped .npz data and the guards shared by the data tests (test_data_*.py)."""

import socket

import numpy as np
import pytest

from aad_tf import data


# Tiny MNIST-shaped data; NUM_TRAIN < 256 lets pixel [0, 0] carry the example index.
NUM_TRAIN, NUM_TEST = 50, 13


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Fails any test here that opens a non-local connection from Python."""
  real_connect = socket.socket.connect

  def guarded_connect(sock, address):
    host = address[0] if isinstance(address, tuple) else address
    if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in (
        'localhost', '127.0.0.1', '::1'):
      raise AssertionError(f'test tried to reach the network: {address}')
    return real_connect(sock, address)

  monkeypatch.setattr(socket.socket, 'connect', guarded_connect)


@pytest.fixture(autouse=True)
def fresh_cache():
  data.clear_cache()
  yield
  data.clear_cache()


def _raw_mnist(num_train=NUM_TRAIN, num_test=NUM_TEST, seed=0):
  """uint8 arrays as in shared/data/mnist.npz; pixel [0, 0] is the example index."""
  rng = np.random.default_rng(seed)
  raw = {
      'x_train': rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
      'y_train': rng.integers(0, 10, num_train).astype(np.uint8),
      'x_test': rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
      'y_test': rng.integers(0, 10, num_test).astype(np.uint8),
  }
  raw['x_train'][:, 0, 0] = np.arange(num_train)
  raw['x_test'][:, 0, 0] = np.arange(num_test)
  return raw


def _write_npz(directory, raw, name='mnist'):
  path = directory / f'{name}.npz'
  np.savez_compressed(path, **raw)
  return path


@pytest.fixture
def tiny_dir(tmp_path):
  _write_npz(tmp_path, _raw_mnist())
  return tmp_path
