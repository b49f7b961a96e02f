"""ImageNet 2012: a TFDS dataset prepared once from the manual download, then streamed.

JPEG bytes are decoded per example, after sharding and skipping, so a resumed
run reads, but does not decode, the part of the epoch it skips. The registry
entry (`catalog.py`) has `streamed=True`; its loader is `imagenet_builder`.
"""

import functools
import os

from absl import logging
import numpy as np
import tensorflow as tf

from aad_tf.data import registry
from aad_tf.data.arrays import DataNotFoundError
from aad_tf.data.arrays import default_data_dir
from aad_tf.data.pipelines import _check_nonnegative_int
from aad_tf.data.pipelines import _check_positive_int
from aad_tf.data.pipelines import _check_seed
from aad_tf.data.pipelines import steps_per_epoch

IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
IMAGENET_AUGMENTATIONS = (None, 'inception_crop_flip')
IMAGENET_SHUFFLE_BUFFER = 10_000
# Evaluation crops the centre image_size / (image_size + 32) of the shorter
# side (0.875 at 224), the usual ImageNet protocol.
_CENTER_CROP_PADDING = 32


def imagenet_builder(data_dir: str | None = None, *,
                     manual_dir: str | None = None):
  """The TFDS `imagenet2012` builder of `data_dir`, prepared offline if needed.

  ImageNet is never downloaded: users fetch ILSVRC2012_img_train.tar and
  ILSVRC2012_img_val.tar from image-net.org into `manual_dir` (TFDS's
  convention: `<data_dir>/downloads/manual`). If `data_dir` holds no prepared
  copy yet, TFDS prepares one from those files (once; hours for the real
  dataset), with no GCS lookup and no download.

  Args:
    data_dir: the TFDS data directory; None means `default_data_dir()`.
    manual_dir: where the manual-download tar files are; None means
      `<data_dir>/downloads/manual`.

  Returns:
    A prepared `tfds.core.DatasetBuilder` (splits 'train' and 'validation').

  Raises:
    DataNotFoundError: at once, before any TFDS work, when the dataset is not
      prepared and a manual file is missing; the message holds TFDS's
      manual-download instructions.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = os.path.abspath(os.fspath(
      default_data_dir() if data_dir is None else data_dir))
  builder = tfds.builder(registry.get_info('imagenet').tfds_name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  manual_dir = os.path.abspath(os.fspath(
      manual_dir or os.path.join(data_dir, 'downloads', 'manual')))
  missing = [os.path.join(manual_dir, name) for name in IMAGENET_MANUAL_FILES
             if not tf.io.gfile.exists(os.path.join(manual_dir, name))]
  if missing:
    paths = '\n'.join(f'  {p}' for p in missing)
    raise DataNotFoundError(
        f'No prepared imagenet2012 under {data_dir}, and the manual download '
        f'is incomplete. Missing:\n{paths}\n'
        f'TFDS instructions: {builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}\n'
        f'Put the files in --manual_dir (now {manual_dir}); the first run '
        f'prepares the dataset under --data_dir. Nothing is downloaded.')
  logging.info('Preparing imagenet2012 in %s from %s (once; no download).',
               data_dir, manual_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return builder


def _imagenet_records(builder, split: str,
                      shuffle_seed: int | None = None) -> tf.data.Dataset:
  """(JPEG bytes, int label) records of `split`, files shuffled by the seed."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  options = tf.data.Options()
  options.deterministic = True
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, options=options,
                                try_autocache=False)
  return builder.as_dataset(
      split=split, shuffle_files=shuffle_seed is not None, as_supervised=True,
      decoders={'image': tfds.decode.SkipDecoding()}, read_config=read_config)


def inception_crop_flip(image_bytes: tf.Tensor, *, seed: tf.Tensor,
                        image_size: int) -> tf.Tensor:
  """Random-resized crop and random flip of one JPEG (Szegedy et al. 2015).

  The crop covers 8% to 100% of the image with aspect ratio in [3/4, 4/3]
  (whole image after 10 failed draws); only the crop is decoded.

  Args:
    image_bytes: a scalar string tensor holding a JPEG.
    seed: int64 [2], as for stateless random ops.
    image_size: output height and width, S.

  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  crop_seed, flip_seed = tf.unstack(tf.random.split(seed, num=2))
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.image.extract_jpeg_shape(image_bytes),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=crop_seed,
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  image = _resize_unit(image, image_size)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def center_crop(image_bytes: tf.Tensor, *, image_size: int) -> tf.Tensor:
  """The evaluation view of one JPEG: its central crop, resized to S x S.

  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  shape = tf.image.extract_jpeg_shape(image_bytes)
  height, width = shape[0], shape[1]
  fraction = image_size / (image_size + _CENTER_CROP_PADDING)
  side = tf.cast(
      fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  window = tf.stack([(height - side + 1) // 2, (width - side + 1) // 2,
                     side, side])
  image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  return _resize_unit(image, image_size)


def _resize_unit(image: tf.Tensor, image_size: int) -> tf.Tensor:
  image = tf.image.resize(image, [image_size, image_size], method='bilinear',
                          antialias=True)
  return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def imagenet_train_dataset(builder, *, batch_size: int, seed: int,
                           num_steps: int, start_step: int = 0,
                           image_size: int = 224,
                           augment: str | None = 'inception_crop_flip',
                           input_context: tf.distribute.InputContext | None = None,
                           shuffle_buffer: int = IMAGENET_SHUFFLE_BUFFER
                           ) -> tf.data.Dataset:
  """A deterministic stream of `num_steps` ImageNet training batches.

  Epoch `e` reads the training files in an order fixed by (seed, e) through a
  shuffle buffer seeded the same way, and drops its last incomplete batch;
  example i of the whole stream is augmented with the stateless seed
  (seed, i). Starting at `start_step` skips start_step * B examples without
  decoding them, so a resumed run sees exactly the batches it would have
  (reading, not decoding, the part of the epoch it skips).

  Args:
    builder: from `imagenet_builder`.
    batch_size: the global batch size, B.
    seed: non-negative int fixing the order and the augmentation.
    num_steps: number of (global) batches.
    start_step: global index of the first batch.
    image_size: output height and width, S.
    augment: 'inception_crop_flip' (see `inception_crop_flip`) or None (the
      evaluation centre crop).
    input_context: from `strategy.distribute_datasets_from_function`: yield
      only this worker's replicas' slices of each global batch, in replica
      order (replica r gets rows [r * B/R, (r + 1) * B/R)); other examples
      are skipped before decoding. None: whole global batches.
    shuffle_buffer: examples in the shuffle buffer.

  Returns:
    tf.data.Dataset of (x float32 [b, S, S, 3] in [0, 1], y int32 [b]) with
    b = B, or B / R per replica under `input_context`.
  """
  if augment not in IMAGENET_AUGMENTATIONS:
    raise ValueError(
        f'augment must be one of {IMAGENET_AUGMENTATIONS}, got {augment!r}')
  _check_seed(seed)
  _check_positive_int(image_size, 'image_size')
  _check_positive_int(shuffle_buffer, 'shuffle_buffer')
  _check_nonnegative_int(start_step, 'start_step')
  _check_nonnegative_int(num_steps, 'num_steps')
  num_train = builder.info.splits['train'].num_examples
  spe = steps_per_epoch(num_train, batch_size)
  replicas, first, count = 1, 0, 1
  if input_context is not None:
    replicas = input_context.num_replicas_in_sync
    count = replicas // input_context.num_input_pipelines
    first = input_context.input_pipeline_id * count
  if batch_size % replicas:
    raise ValueError(f'batch_size {batch_size} does not split evenly over '
                     f'{replicas} replicas')
  per_replica = batch_size // replicas

  stop_step = start_step + num_steps
  parts = []
  for epoch in range(start_step // spe, -(-stop_step // spe)):
    first_step = max(start_step, epoch * spe)
    last_step = min(stop_step, (epoch + 1) * spe)
    epoch_seed = int(np.random.default_rng([seed, epoch]).integers(2**31 - 1))
    records = _imagenet_records(builder, 'train', shuffle_seed=epoch_seed)
    records = records.shuffle(shuffle_buffer, seed=epoch_seed,
                              reshuffle_each_iteration=False)
    records = records.enumerate(start=epoch * spe * batch_size)
    records = records.skip((first_step - epoch * spe) * batch_size)
    parts.append(records.take((last_step - first_step) * batch_size))
  if not parts:
    raise ValueError('num_steps must be positive')
  stream = functools.reduce(lambda a, b: a.concatenate(b), parts)
  if count < replicas:
    low, high = first * per_replica, (first + count) * per_replica
    stream = stream.filter(
        lambda index, record: tf.logical_and(index % batch_size >= low,
                                             index % batch_size < high))

  def decode(index, record):
    image_bytes, label = record
    if augment == 'inception_crop_flip':
      image = inception_crop_flip(
          image_bytes, seed=tf.stack([tf.constant(seed, tf.int64), index]),
          image_size=image_size)
    else:
      image = center_crop(image_bytes, image_size=image_size)
    return image, tf.cast(label, tf.int32)

  stream = stream.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True)
  stream = stream.batch(per_replica if input_context is not None
                        else batch_size, drop_remainder=True)
  return stream.prefetch(tf.data.AUTOTUNE)


def imagenet_eval_dataset(builder, *, batch_size: int,
                          num_examples: int | None = None,
                          image_size: int = 224,
                          split: str = 'validation') -> tf.data.Dataset:
  """The first `num_examples` images of `split` in file order, centre-cropped.

  Returns:
    tf.data.Dataset of (x float32 [B, S, S, 3] in [0, 1], y int32 [B]); the
    last batch may be smaller.
  """
  _check_positive_int(batch_size, 'batch_size')
  _check_positive_int(image_size, 'image_size')
  size = builder.info.splits[split].num_examples
  if num_examples is None:
    num_examples = size
  _check_positive_int(num_examples, 'num_examples')
  if num_examples > size:
    raise ValueError(f'num_examples {num_examples} exceeds the {size} '
                     f'examples of the {split} split')
  records = _imagenet_records(builder, split).take(num_examples)
  dataset = records.map(
      lambda image_bytes, label: (center_crop(image_bytes,
                                              image_size=image_size),
                                  tf.cast(label, tf.int32)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
