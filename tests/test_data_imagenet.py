"""Tests of the ImageNet input pipeline on a tiny fake manual download (no network, ever)."""

import os
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import data as data_lib
from aad_tf import defenses
from aad_tf import training

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_imagenet  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

SIZE = 32


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagenet')
  manual = fake_imagenet.write_manual_dir(str(root / 'manual'))
  return data_lib.imagenet_builder(str(root / 'tfds'), manual_dir=manual)


def test_missing_manual_files_fail_at_once_with_instructions(tmp_path):
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'ILSVRC2012_img_val.tar').write_bytes(b'')
  started = time.time()
  with pytest.raises(data_lib.DataNotFoundError) as error:
    data_lib.imagenet_builder(str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'manual'))
  assert time.time() - started < 15  # no download attempt, no retries
  message = str(error.value)
  assert 'ILSVRC2012_img_train.tar' in message and 'image-net.org' in message
  assert 'ILSVRC2012_img_val.tar\n' not in message.split('TFDS instructions')[0]  # present


def test_imagenet_is_not_loaded_into_memory():
  with pytest.raises(ValueError, match='streamed'):
    data_lib.load_arrays('imagenet')


def test_prepared_offline_from_the_manual_files(builder, tmp_path):
  splits = builder.info.splits
  assert splits['train'].num_examples == len(fake_imagenet.SYNSETS) * fake_imagenet.PER_SYNSET
  assert splits['validation'].num_examples == fake_imagenet.NUM_VAL
  # Prepared once: opening it again needs no manual files.
  again = data_lib.imagenet_builder(builder.data_dir.rsplit('/imagenet2012', 1)[0],
                                    manual_dir=str(tmp_path / 'nowhere'))
  assert again.is_prepared()


def batches(dataset):
  return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_each_epoch_visits_every_training_image_once(builder):
  # Centre crops (augment=None) of 2 epochs vs the training split read in file order.
  stream = batches(data_lib.imagenet_train_dataset(builder, batch_size=2, seed=5, num_steps=6,
                                                   image_size=SIZE, augment=None))
  reference = batches(data_lib.imagenet_eval_dataset(builder, batch_size=6, image_size=SIZE,
                                                     split='train'))[0]
  key = lambda x: np.round(x.reshape(len(x), -1).sum(axis=1), 3)
  for epoch in range(2):
    x = np.concatenate([b[0] for b in stream[3 * epoch:3 * epoch + 3]])
    y = np.concatenate([b[1] for b in stream[3 * epoch:3 * epoch + 3]])
    order = np.argsort(key(x))
    want = np.argsort(key(reference[0]))
    np.testing.assert_allclose(x[order], reference[0][want], atol=1e-6)
    np.testing.assert_array_equal(y[order], reference[1][want])
  epoch0 = np.concatenate([b[1] for b in stream[:3]])
  assert set(epoch0) == {0, 1}


def test_resumed_stream_repeats_the_batches_augmentation_included(builder):
  full = batches(data_lib.imagenet_train_dataset(builder, batch_size=2, seed=5, num_steps=5,
                                                 image_size=SIZE))
  tail = batches(data_lib.imagenet_train_dataset(builder, batch_size=2, seed=5, num_steps=2,
                                                 start_step=3, image_size=SIZE))
  for (x0, y0), (x1, y1) in zip(full[3:], tail):
    np.testing.assert_array_equal(x1, x0)
    np.testing.assert_array_equal(y1, y0)
  for x, _ in full:
    assert x.shape == (2, SIZE, SIZE, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
  other = batches(data_lib.imagenet_train_dataset(builder, batch_size=2, seed=6, num_steps=5,
                                                  image_size=SIZE))
  assert any(not np.array_equal(a[0], b[0]) for a, b in zip(full, other))


@pytest.mark.parametrize('workers, worker', [(1, 0), (2, 1)])
def test_replica_batches_are_slices_of_the_global_batches(builder, workers, worker):
  full = batches(data_lib.imagenet_train_dataset(builder, batch_size=4, seed=5, num_steps=3,
                                                 image_size=SIZE))
  context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                       num_replicas_in_sync=2)
  mine = batches(data_lib.imagenet_train_dataset(builder, batch_size=4, seed=5, num_steps=3,
                                                 image_size=SIZE, input_context=context))
  local = 2 // workers
  assert len(mine) == 3 * local
  for step in range(3):
    for k in range(local):
      replica = worker * local + k
      rows = slice(2 * replica, 2 * replica + 2)
      np.testing.assert_array_equal(mine[step * local + k][0], full[step][0][rows])
      np.testing.assert_array_equal(mine[step * local + k][1], full[step][1][rows])


def test_center_crop_against_numpy(tmp_path):
  image = np.random.default_rng(3).integers(0, 256, (50, 80, 3), dtype=np.uint8)
  encoded = tf.io.encode_jpeg(image, quality=100)
  decoded = tf.io.decode_jpeg(encoded).numpy()
  side = int(SIZE / (SIZE + 32) * 50)  # the shorter side times 0.5
  top, left = (50 - side + 1) // 2, (80 - side + 1) // 2
  want = tf.image.resize(decoded[top:top + side, left:left + side], [SIZE, SIZE],
                         antialias=True).numpy() / 255
  got = data_lib.center_crop(encoded, image_size=SIZE).numpy()
  np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-5)


def test_inception_crop_flip_is_a_function_of_its_seed():
  image = np.random.default_rng(4).integers(0, 256, (64, 48, 3), dtype=np.uint8)
  encoded = tf.io.encode_jpeg(image)
  crops = [data_lib.inception_crop_flip(encoded, seed=tf.constant([1, i], tf.int64),
                                        image_size=SIZE).numpy() for i in (0, 0, 1)]
  np.testing.assert_array_equal(crops[0], crops[1])
  assert not np.array_equal(crops[0], crops[2])
  assert crops[0].shape == (SIZE, SIZE, 3) and 0 <= crops[0].min() and crops[0].max() <= 1


def test_training_streams_imagenet(builder, tmp_path):
  data_dir = builder.data_dir.rsplit('/imagenet2012', 1)[0]
  config = training.TrainConfig(
      model_dir=str(tmp_path / 'run'), dataset='imagenet', data_dir=data_dir, model='resnet9',
      image_size=SIZE, batch_size=2, train_steps=4, optimizer='sgd', learning_rate=0.01,
      augment='inception_crop_flip', checkpoint_every=2, log_every=1,
      defense=defenses.DefenseConfig(defense='madry', aad=True, attack=defenses.AttackConfig(
          eps=16 / 255, step_size=8 / 255, num_steps=1)))
  model = training.train(config)
  assert int(model.optimizer.iterations.numpy()) == 4
  assert model.classifier.output.shape[-1] == 1000
  assert tf.train.latest_checkpoint(str(tmp_path / 'run' / 'checkpoints')).endswith('ckpt-4')
