"""Tests for aad_tf.data.pipelines: the resumable train / eval pipelines and augmentation."""

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import data
from tiny_mnist import NUM_TEST, NUM_TRAIN  # noqa: F401
from tiny_mnist import _raw_mnist, _write_npz  # noqa: F401
from tiny_mnist import fresh_cache, no_network, tiny_dir  # noqa: F401  (fixtures)


@pytest.fixture
def tiny(tiny_dir):
  return data.load_arrays('mnist', data_dir=tiny_dir, source='npz')


def _example_ids(x):
  """Recovers the example indices that _raw_mnist wrote into pixel [0, 0]."""
  return np.rint(np.asarray(x)[:, 0, 0, 0] * 255).astype(int)


def _stream(dataset):
  return [(x.numpy(), y.numpy()) for x, y in dataset]


def _every_pixel_value_arrays(num=40, shape=(32, 32, 3)):
  """uint8 and float32 (x / 255) Arrays of the same images, which hold all 256 pixel values."""
  rng = np.random.default_rng(4)
  x = rng.integers(0, 256, (num, *shape), dtype=np.uint8)
  x.reshape(-1)[:256] = np.arange(256, dtype=np.uint8)
  y = rng.integers(0, 10, num).astype(np.int32)
  x_float = x.astype(np.float32) / np.float32(255)
  return (data.Arrays(x, y, x[:13], y[:13]),
          data.Arrays(x_float, y, x_float[:13], y[:13]))


@pytest.mark.parametrize('augment', [None, 'pad_crop_flip'])
def test_uint8_pipelines_equal_float32_ones_exactly(augment):
  stored, scaled = _every_pixel_value_arrays()
  assert isinstance(stored.x_train, data.UnitImages)
  assert isinstance(scaled.x_train, np.ndarray)
  pipelines = [
      lambda a: data.train_dataset(a, batch_size=8, seed=3, num_steps=7, start_step=2,
                                   augment=augment),
      lambda a: data.eval_dataset(a, batch_size=5)]
  for make in pipelines:
    for (x, y), (x_want, y_want) in zip(_stream(make(stored)), _stream(make(scaled)),
                                        strict=True):
      assert x.dtype == np.float32
      np.testing.assert_array_equal(x, x_want)  # bit for bit: 0 ulp
      np.testing.assert_array_equal(y, y_want)
  np.testing.assert_array_equal(np.asarray(stored.x_train), scaled.x_train)


def test_steps_per_epoch():
  assert data.steps_per_epoch(50000, 128) == 390
  assert data.steps_per_epoch(50000, 128, drop_remainder=False) == 391
  assert data.steps_per_epoch(60000, 100) == 600
  with pytest.raises(ValueError, match='exceeds num_train'):
    data.steps_per_epoch(10, 11)
  with pytest.raises(ValueError, match='batch_size must be a positive int'):
    data.steps_per_epoch(10, 0)


@pytest.mark.parametrize('drop_remainder', [True, False])
def test_batch_indices_follow_the_documented_permutation(drop_remainder):
  n, batch, seed = 23, 5, 7
  spe = data.steps_per_epoch(n, batch, drop_remainder=drop_remainder)
  expected = []  # The contract, written out independently of the implementation.
  for epoch in range(4):
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    expected += [perm[b * batch:(b + 1) * batch] for b in range(spe)]
  flat, lengths = data.batch_indices(n, batch_size=batch, seed=seed, start_step=0,
                                     num_steps=4 * spe, drop_remainder=drop_remainder)
  np.testing.assert_array_equal(lengths, [len(b) for b in expected])
  np.testing.assert_array_equal(flat, np.concatenate(expected))
  assert flat.dtype == np.int32


@pytest.mark.parametrize('augment, drop_remainder', [
    (None, True), ('pad_crop_flip', True), (None, False)])
def test_train_dataset_resumes_exactly(tiny, augment, drop_remainder):
  kwargs = dict(batch_size=8, seed=3, augment=augment, drop_remainder=drop_remainder)
  full = _stream(data.train_dataset(tiny, num_steps=20, **kwargs))  # 6 or 7 steps per epoch.
  for start_step in [0, 1, 6, 13]:
    resumed = _stream(data.train_dataset(tiny, start_step=start_step, num_steps=20 - start_step,
                                         **kwargs))
    assert len(resumed) == 20 - start_step
    for (x, y), (x_ref, y_ref) in zip(resumed, full[start_step:]):
      np.testing.assert_array_equal(x, x_ref)
      np.testing.assert_array_equal(y, y_ref)


def test_train_dataset_epochs_are_permutations(tiny):
  batch = 8
  spe = data.steps_per_epoch(NUM_TRAIN, batch)  # 6 batches, 48 of 50 examples.
  stream = _stream(data.train_dataset(tiny, batch_size=batch, seed=0, num_steps=3 * spe))
  raw = _raw_mnist()
  epochs = []
  for epoch in range(3):
    ids = np.concatenate([_example_ids(x) for x, _ in stream[epoch * spe:(epoch + 1) * spe]])
    assert len(set(ids)) == spe * batch  # No example twice within an epoch.
    np.testing.assert_array_equal(ids, np.random.default_rng([0, epoch]).permutation(50)[:48])
    labels = np.concatenate([y for _, y in stream[epoch * spe:(epoch + 1) * spe]])
    np.testing.assert_array_equal(labels, raw['y_train'][ids])  # x and y stay paired.
    epochs.append(ids)
  assert not np.array_equal(epochs[0], epochs[1])


def test_train_dataset_keeps_remainder_batches(tiny):
  stream = _stream(data.train_dataset(tiny, batch_size=8, seed=0, num_steps=14,
                                      drop_remainder=False))
  assert [len(y) for _, y in stream] == [8] * 6 + [2] + [8] * 6 + [2]
  ids = np.concatenate([_example_ids(x) for x, _ in stream[:7]])
  np.testing.assert_array_equal(np.sort(ids), np.arange(NUM_TRAIN))


def test_train_dataset_element_spec_is_static(tiny):
  dataset = data.train_dataset(tiny, batch_size=8, seed=0, num_steps=2)
  x_spec, y_spec = dataset.element_spec
  assert x_spec.shape == (8, 28, 28, 1) and x_spec.dtype == tf.float32
  assert y_spec.shape == (8,) and y_spec.dtype == tf.int32


def test_train_dataset_seed_changes_order(tiny):
  ids = [_example_ids(next(iter(data.train_dataset(tiny, batch_size=16, seed=s, num_steps=1)))[0])
         for s in (0, 1)]
  assert not np.array_equal(*ids)


def test_train_dataset_rejects_bad_arguments(tiny):
  with pytest.raises(ValueError, match='augment must be one of'):
    data.train_dataset(tiny, batch_size=8, seed=0, num_steps=1, augment='mixup')
  with pytest.raises(ValueError, match='seed'):
    data.train_dataset(tiny, batch_size=8, seed=-1, num_steps=1)
  with pytest.raises(ValueError, match='start_step'):
    data.train_dataset(tiny, batch_size=8, seed=0, num_steps=1, start_step=-1)
  with pytest.raises(ValueError, match='exceeds num_train'):
    data.train_dataset(tiny, batch_size=NUM_TRAIN + 1, seed=0, num_steps=1)


def _crops_and_mirrors(image, pad):
  """Every output pad_crop_flip may give for one [H, W, C] image, by NumPy."""
  height, width = image.shape[:2]
  padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)])
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[dy:dy + height, dx:dx + width]
      yield (dy, dx, False), crop
      yield (dy, dx, True), crop[:, ::-1]


def test_pad_crop_flip_matches_numpy_crops():
  pad = 2
  images = np.random.default_rng(0).random((64, 6, 5, 3)).astype(np.float32)
  out = data.pad_crop_flip(tf.constant(images), seed=tf.constant([1, 2], tf.int64), pad=pad).numpy()
  assert out.shape == images.shape
  chosen = []
  for image, result in zip(images, out):
    matches = [choice for choice, crop in _crops_and_mirrors(image, pad)
               if np.array_equal(crop, result)]
    assert len(matches) == 1
    chosen.append(matches[0])
  # Offsets cover [0, 2 * pad] and both mirror states occur.
  assert {c[0] for c in chosen} == set(range(2 * pad + 1))
  assert {c[1] for c in chosen} == set(range(2 * pad + 1))
  assert {c[2] for c in chosen} == {False, True}


def test_pad_crop_flip_is_a_function_of_the_seed():
  images = tf.random.stateless_uniform([16, 8, 8, 1], seed=[0, 0])
  first = data.pad_crop_flip(images, seed=tf.constant([5, 9]))
  np.testing.assert_array_equal(first, data.pad_crop_flip(images, seed=tf.constant([5, 9])))
  assert not np.array_equal(first, data.pad_crop_flip(images, seed=tf.constant([5, 10])))


def test_train_dataset_augments_each_step_differently(tiny):
  plain = _stream(data.train_dataset(tiny, batch_size=8, seed=0, num_steps=2))
  augmented = _stream(data.train_dataset(tiny, batch_size=8, seed=0, num_steps=2,
                                         augment='pad_crop_flip'))
  for (x, y), (x_aug, y_aug) in zip(plain, augmented):
    np.testing.assert_array_equal(y, y_aug)
    assert not np.array_equal(x, x_aug)
    for image, result in zip(x, x_aug):
      assert any(np.array_equal(crop, result) for _, crop in _crops_and_mirrors(image, 4))


def test_eval_dataset_is_in_order_and_keeps_last_batch(tiny):
  batches = _stream(data.eval_dataset(tiny, batch_size=5))
  assert [len(y) for _, y in batches] == [5, 5, 3]
  np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), tiny.x_test)
  np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), tiny.y_test)


def test_eval_dataset_prefix_and_train_split(tiny):
  batches = _stream(data.eval_dataset(tiny, batch_size=4, num_examples=10, split='train'))
  assert [len(y) for _, y in batches] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), tiny.x_train[:10])
  with pytest.raises(ValueError, match='exceeds the 13 examples'):
    data.eval_dataset(tiny, batch_size=4, num_examples=14)
  with pytest.raises(ValueError, match='split must be one of'):
    data.eval_dataset(tiny, batch_size=4, split='validation')


def test_eval_dataset_from_an_offset(tiny):
  batches = _stream(data.eval_dataset(tiny, batch_size=4, num_examples=6, first_example=5))
  assert [len(y) for _, y in batches] == [4, 2]
  np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), tiny.y_test[5:11])
  rest = _stream(data.eval_dataset(tiny, batch_size=4, first_example=10))  # to the end
  np.testing.assert_array_equal(np.concatenate([y for _, y in rest]), tiny.y_test[10:])
  with pytest.raises(ValueError, match='first_example 10 \\+ num_examples 4 exceeds'):
    data.eval_dataset(tiny, batch_size=4, num_examples=4, first_example=10)
  for bad in (-1, 13, 2.0):
    with pytest.raises(ValueError, match='first_example must be an int'):
      data.eval_dataset(tiny, batch_size=4, first_example=bad)
