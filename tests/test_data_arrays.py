"""Tests for aad_tf.data.arrays: loading (npz, TFDS), validation, caching, uint8 storage."""

import os
import time
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import data
from tiny_mnist import NUM_TEST, NUM_TRAIN  # noqa: F401
from tiny_mnist import _raw_mnist, _write_npz  # noqa: F401
from tiny_mnist import fresh_cache, no_network, tiny_dir  # noqa: F401  (fixtures)


def _example_ids(x):
  """Recovers the example indices that _raw_mnist wrote into pixel [0, 0]."""
  return np.rint(np.asarray(x)[:, 0, 0, 0] * 255).astype(int)


@pytest.mark.parametrize('source', ['npz', 'auto'])
def test_load_npz_scales_and_adds_channel_axis(tiny_dir, source):
  raw = _raw_mnist()
  arrays = data.load_arrays('mnist', data_dir=str(tiny_dir), source=source)
  assert arrays.x_train.shape == (NUM_TRAIN, 28, 28, 1)
  assert arrays.x_test.shape == (NUM_TEST, 28, 28, 1)
  assert arrays.x_train.dtype == np.float32 and arrays.y_train.dtype == np.int32
  # float64 division then rounding equals correctly rounded float32 division (no double-rounding
  # error: float64 carries more than 2 * 24 + 2 bits).
  np.testing.assert_array_equal(
      arrays.x_train[..., 0], (raw['x_train'] / 255.0).astype(np.float32))
  np.testing.assert_array_equal(arrays.y_test, raw['y_test'])
  with pytest.raises(ValueError, match='read-only'):
    arrays.x_train[0, 0, 0, 0] = 1.0


def test_loaded_images_stay_uint8_and_read_as_float32_over_255(tiny_dir):
  raw = _raw_mnist()
  arrays = data.load_arrays('mnist', data_dir=str(tiny_dir))
  assert isinstance(arrays.x_train, data.UnitImages)
  np.testing.assert_array_equal(arrays.x_train.raw[..., 0], raw['x_train'])
  assert not arrays.x_train.raw.flags.writeable
  # What the pipelines capture: the uint8 pixels, not a float32 copy four times their size.
  x_all, _ = data.pipelines._as_tensors(arrays, 'train')  # pylint: disable=protected-access
  assert x_all.dtype == tf.uint8 and x_all.shape == (NUM_TRAIN, 28, 28, 1)
  want = raw['x_train'][..., None].astype(np.float32) / np.float32(255)
  for got in (arrays.x_train[3:7], arrays.x_train[[5, 0]], np.asarray(arrays.x_train),
              arrays.x_train.copy()):
    assert got.dtype == np.float32
  np.testing.assert_array_equal(arrays.x_train[3:7], want[3:7])
  np.testing.assert_array_equal(arrays.x_train[[5, 0]], want[[5, 0]])
  np.testing.assert_array_equal(np.asarray(arrays.x_train), want)
  assert arrays.x_train[2, 10, 10, 0] == want[2, 10, 10, 0]


def test_load_is_cached_until_file_changes(tiny_dir):
  first = data.load_arrays('mnist', data_dir=tiny_dir)
  assert data.load_arrays('mnist', data_dir=tiny_dir) is first
  os.remove(tiny_dir / 'mnist.npz')
  _write_npz(tiny_dir, _raw_mnist(num_train=20, seed=1))
  assert data.load_arrays('mnist', data_dir=tiny_dir).num_train == 20


def test_load_accepts_keras_style_column_labels(tmp_path):
  rng = np.random.default_rng(0)
  _write_npz(tmp_path, {
      'x_train': rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
      'y_train': np.arange(6, dtype=np.int64)[:, None],
      'x_test': rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
      'y_test': np.array([[9], [0]], np.int64),
  }, name='cifar10')
  arrays = data.load_arrays('cifar10', data_dir=tmp_path)
  np.testing.assert_array_equal(arrays.y_train, np.arange(6))
  assert arrays.x_train.shape == (6, 32, 32, 3)


def _with(**changes):
  raw = _raw_mnist()
  raw.update(changes)
  return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize('raw, message', [
    (_with(y_test=None), r"missing arrays \['y_test'\]"),
    (_with(x_train=np.zeros((NUM_TRAIN, 28, 28), np.float32)), 'x_train has dtype float32'),
    (_with(x_test=np.zeros((NUM_TEST, 32, 32, 3), np.uint8)),
     r'x_test has shape \(13, 32, 32, 3\)'),
    (_with(y_train=np.zeros(NUM_TRAIN - 1, np.uint8)), 'y_train has shape'),
    (_with(y_train=np.full(NUM_TRAIN, 0.5)), 'y_train has dtype float64'),
    (_with(y_test=np.full(NUM_TEST, 10, np.uint8)), r'labels in \[10, 10\]'),
    (_with(y_test=np.full(NUM_TEST, -1, np.int64)), r'labels in \[-1, -1\]'),
])
def test_load_rejects_bad_arrays(tmp_path, raw, message):
  path = _write_npz(tmp_path, raw)
  with pytest.raises(ValueError, match=message) as error:
    data.load_arrays('mnist', data_dir=tmp_path)
  assert str(path) in str(error.value)


def _truncate(path):
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _flip_middle_bytes(path):
  content = bytearray(path.read_bytes())
  middle = len(content) // 2
  content[middle:middle + 64] = bytes(b ^ 0xFF for b in content[middle:middle + 64])
  path.write_bytes(bytes(content))


def _replace_with_npy(path):
  with open(path, 'wb') as f:
    np.save(f, np.zeros(3))


def _replace_with_text(path):
  path.write_text('not an archive')


def _replace_with_pickled_object(path):
  np.savez(path, x_train=np.array([{}], dtype=object), y_train=np.zeros(1), x_test=np.zeros(1),
           y_test=np.zeros(1))


@pytest.mark.parametrize('corrupt', [
    _truncate, _flip_middle_bytes, _replace_with_npy, _replace_with_text,
    _replace_with_pickled_object])
def test_load_rejects_unreadable_file(tiny_dir, corrupt):
  path = tiny_dir / 'mnist.npz'
  corrupt(path)
  with pytest.raises(ValueError) as error:
    data.load_arrays('mnist', data_dir=tiny_dir)
  assert str(path) in str(error.value)


def test_corrupt_payload_is_reported_not_raised_raw(tiny_dir):
  # Keep the zip directory intact but damage the compressed data of one member.
  path = tiny_dir / 'mnist.npz'
  with zipfile.ZipFile(path) as archive:
    member = archive.getinfo('x_train.npy')
  content = bytearray(path.read_bytes())
  start = member.header_offset + 30 + len(member.filename) + 100
  content[start:start + 32] = bytes(32)
  path.write_bytes(bytes(content))
  with pytest.raises(ValueError, match='truncated or corrupt'):
    data.load_arrays('mnist', data_dir=tiny_dir)


def test_missing_data_fails_fast_and_explains(tmp_path):
  start = time.monotonic()
  with pytest.raises(data.DataNotFoundError) as error:
    data.load_arrays('cifar10', data_dir=tmp_path)
  assert time.monotonic() - start < 2.0
  assert isinstance(error.value, FileNotFoundError)
  message = str(error.value)
  for expected in [str(tmp_path / 'cifar10.npz'), str(tmp_path / 'cifar10') + os.sep,
                   'x_train, y_train, x_test, y_test', '--data_dir', 'tfds build cifar10',
                   '--download']:
    assert expected in message


@pytest.mark.parametrize('source, looked_for', [('npz', 'mnist.npz'), ('tfds', 'mnist' + os.sep)])
def test_missing_data_for_one_source(tmp_path, source, looked_for):
  with pytest.raises(data.DataNotFoundError, match='Looked for') as error:
    data.load_arrays('mnist', data_dir=tmp_path, source=source)
  assert str(tmp_path / looked_for) in str(error.value)


def test_unprepared_tfds_dir_is_not_downloaded(tmp_path):
  (tmp_path / 'mnist').mkdir()
  start = time.monotonic()
  with pytest.raises(data.DataNotFoundError, match='no prepared dataset'):
    data.load_arrays('mnist', data_dir=tmp_path)
  assert time.monotonic() - start < 10.0


def test_load_rejects_bad_arguments(tiny_dir):
  with pytest.raises(ValueError, match='source must be one of'):
    data.load_arrays('mnist', data_dir=tiny_dir, source='web')
  with pytest.raises(ValueError, match='valid names'):
    data.load_arrays('svhn', data_dir=tiny_dir)


def test_load_prepared_tfds(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  raw = _raw_mnist(num_train=12, num_test=5)
  features = tfds.builder('mnist', data_dir=tmp_path / 'unused').info.features

  def split(name):
    return tf.data.Dataset.from_tensor_slices(
        {'image': raw[f'x_{name}'][..., None], 'label': raw[f'y_{name}'].astype(np.int64)})

  tfds.dataset_builders.store_as_tfds_dataset(
      name='mnist', version=str(tfds.builder('mnist', data_dir=tmp_path / 'unused').version),
      features=features, split_datasets={'train': split('train'), 'test': split('test')},
      data_dir=tmp_path / 'tfds', disable_shuffling=True)
  for source in ['tfds', 'auto']:
    data.clear_cache()
    arrays = data.load_arrays('mnist', data_dir=tmp_path / 'tfds', source=source)
    # TFDS may store examples in another order; compare them as a set keyed by pixel [0, 0].
    order = np.argsort(_example_ids(arrays.x_train))
    np.testing.assert_array_equal(arrays.x_train[order, ..., 0], raw['x_train'] / np.float32(255))
    np.testing.assert_array_equal(arrays.y_train[order], raw['y_train'])
    assert arrays.x_test.shape == (5, 28, 28, 1) and arrays.y_test.dtype == np.int32


def test_shared_mnist(shared_data_dir):
  if not (shared_data_dir / 'mnist.npz').is_file():
    pytest.skip(f'{shared_data_dir / "mnist.npz"} not found')
  arrays = data.load_arrays('mnist', data_dir=shared_data_dir, source='npz')
  assert arrays.x_train.shape == (60000, 28, 28, 1) and arrays.x_test.shape == (10000, 28, 28, 1)
  assert arrays.x_train.dtype == np.float32 and arrays.y_train.dtype == np.int32
  pixels = arrays.x_train.raw  # the uint8 array that stays in memory
  assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255
  # Class counts and mean pixel from shared/data/README.md.
  np.testing.assert_array_equal(
      np.bincount(arrays.y_test), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  assert abs(pixels.mean(dtype=np.float64) - 33.3184) < 1e-3


def test_shared_cifar10_first_labels(shared_data_dir):
  path = shared_data_dir / 'cifar10.npz'
  if not path.is_file():
    pytest.skip(f'{path} not found')
  # Reading only the label arrays keeps this fast; the full load is exercised above on MNIST.
  with np.load(path) as archive:
    raw = {key: archive[key] for key in ['y_train', 'y_test']}
  np.testing.assert_array_equal(raw['y_train'][:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
  np.testing.assert_array_equal(raw['y_test'][:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
