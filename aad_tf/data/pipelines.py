"""In-memory datasets as deterministic, resumable tf.data pipelines, and their augmentation.

Training batches are a pure function of (seed, step): epoch `e` visits the
examples in the order `np.random.default_rng([seed, e]).permutation(N)`, so a
run restored at step k rebuilds exactly the stream it would have seen, by
passing `start_step=k`. Do not checkpoint the tf.data iterator: it would
serialise the captured image tensors. The pipelines capture the uint8 images
and scale each gathered batch by 1/255 in float32, bit for bit what
`x.astype(np.float32) / 255` gives.
"""

import weakref

import numpy as np
import tensorflow as tf

from aad_tf.data.arrays import Arrays
from aad_tf.data.arrays import UnitImages
from aad_tf.data.registry import AUGMENTATIONS


def steps_per_epoch(num_train: int, batch_size: int, *,
                    drop_remainder: bool = True) -> int:
  """Batches in one epoch: floor(N / B), or ceil(N / B) keeping the remainder."""
  _check_positive_int(num_train, 'num_train')
  _check_positive_int(batch_size, 'batch_size')
  if drop_remainder:
    if batch_size > num_train:
      raise ValueError(
          f'batch_size {batch_size} exceeds num_train {num_train}: an epoch '
          f'would have no full batch')
    return num_train // batch_size
  return -(-num_train // batch_size)


def batch_indices(num_train: int, *, batch_size: int, seed: int,
                  start_step: int, num_steps: int,
                  drop_remainder: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Example indices of training steps [start_step, start_step + num_steps).

  Only the epochs that those steps touch are generated.

  Returns:
    (flat, row_lengths): int32 indices, concatenated over the steps, and
    int64 [num_steps] batch sizes (all `batch_size` if drop_remainder).
  """
  spe = steps_per_epoch(num_train, batch_size, drop_remainder=drop_remainder)
  _check_seed(seed)
  _check_nonnegative_int(start_step, 'start_step')
  _check_nonnegative_int(num_steps, 'num_steps')
  flat, row_lengths = [], []
  stop_step = start_step + num_steps
  for epoch in range(start_step // spe, -(-stop_step // spe)):
    perm = np.random.default_rng([seed, epoch]).permutation(num_train)
    first = max(start_step - epoch * spe, 0)  # Batches within the epoch.
    last = min(stop_step - epoch * spe, spe)
    flat.append(perm[first * batch_size:last * batch_size])
    sizes = np.full(last - first, batch_size, np.int64)
    if last == spe and not drop_remainder:
      sizes[-1] = num_train - (spe - 1) * batch_size
    row_lengths.append(sizes)
  if not flat:
    return np.zeros([0], np.int32), np.zeros([0], np.int64)
  return (np.concatenate(flat).astype(np.int32),
          np.concatenate(row_lengths))


def train_dataset(arrays: Arrays, *, batch_size: int, seed: int,
                  num_steps: int, start_step: int = 0,
                  augment: str | None = None,
                  drop_remainder: bool = True) -> tf.data.Dataset:
  """A deterministic stream of `num_steps` training batches from `start_step`.

  The stream from step 0 is the concatenation of the epochs' batches; epoch
  `e` takes the examples in the order
  `np.random.default_rng([seed, e]).permutation(N)` and, if drop_remainder,
  drops its last incomplete batch. Starting at `start_step` skips that many
  batches without producing them, so resuming reproduces the stream exactly,
  augmentation included.

  Args:
    arrays: the dataset; its train split is used.
    batch_size: examples per batch, B.
    seed: non-negative int fixing the order and the augmentation.
    num_steps: number of batches to produce.
    start_step: global index of the first batch.
    augment: None or 'pad_crop_flip' (see `pad_crop_flip`), randomised by
      (seed, step).
    drop_remainder: drop each epoch's last incomplete batch; then B is static.

  Returns:
    tf.data.Dataset of (x float32 [B, H, W, C], y int32 [B]).
  """
  if augment not in AUGMENTATIONS:
    raise ValueError(f'augment must be one of {AUGMENTATIONS}, got {augment!r}')
  flat, row_lengths = batch_indices(
      arrays.num_train, batch_size=batch_size, seed=seed,
      start_step=start_step, num_steps=num_steps,
      drop_remainder=drop_remainder)
  if drop_remainder:
    indices = flat.reshape([num_steps, batch_size])
  else:
    indices = tf.RaggedTensor.from_row_lengths(flat, row_lengths)
  steps = np.arange(start_step, start_step + num_steps, dtype=np.int64)
  x_all, y_all = _as_tensors(arrays, 'train')

  def gather(step, index):
    x = _to_unit(tf.gather(x_all, index))
    y = tf.gather(y_all, index)
    if augment == 'pad_crop_flip':
      x = pad_crop_flip(x, seed=tf.stack([tf.constant(seed, tf.int64), step]))
    return x, y

  dataset = tf.data.Dataset.from_tensor_slices((steps, indices))
  dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def eval_dataset(arrays: Arrays, *, batch_size: int,
                 num_examples: int | None = None,
                 split: str = 'test', first_example: int = 0) -> tf.data.Dataset:
  """`num_examples` examples of `split` from `first_example` on, in order, batched.

  Args:
    arrays: the dataset.
    batch_size: examples per batch, B; the last batch may be smaller.
    num_examples: how many examples; None means all from `first_example` to the end.
    split: 'test' or 'train'.
    first_example: index of the first example (0: the split's start).

  Returns:
    tf.data.Dataset of (x float32 [B, H, W, C], y int32 [B]).
  """
  x, _ = arrays.split(split)
  _check_positive_int(batch_size, 'batch_size')
  if not isinstance(first_example, (int, np.integer)) or not 0 <= first_example < len(x):
    raise ValueError(f'first_example must be an int in [0, {len(x)}), got {first_example!r}')
  if num_examples is None:
    num_examples = len(x) - first_example
  _check_positive_int(num_examples, 'num_examples')
  if first_example + num_examples > len(x):
    raise ValueError(
        f'first_example {first_example} + num_examples {num_examples} exceeds the {len(x)} '
        f'examples of the {split} split')
  x_all, y_all = _as_tensors(arrays, split)
  dataset = tf.data.Dataset.range(first_example, first_example + num_examples).batch(batch_size)
  dataset = dataset.map(
      lambda index: (_to_unit(tf.gather(x_all, index)), tf.gather(y_all, index)))
  return dataset.prefetch(tf.data.AUTOTUNE)


def pad_crop_flip(images: tf.Tensor, *, seed: tf.Tensor,
                  pad: int = 4) -> tf.Tensor:
  """Zero-pads, randomly crops back and randomly flips each image.

  The standard CIFAR augmentation (He et al., 2016, "Deep Residual Learning
  for Image Recognition", Sec. 4.2), as a stateless function of `seed`.

  Args:
    images: [B, H, W, C] with static H and W.
    seed: int32 or int64 [2], as for `tf.random.stateless_uniform`.
    pad: pixels of zero padding on each side; crop offsets are uniform in
      [0, 2 * pad] along each axis.

  Returns:
    [B, H, W, C]; image b is a crop of the padded image b, mirrored left-right
    with probability 1/2.
  """
  _check_nonnegative_int(pad, 'pad')
  height, width = images.shape[1], images.shape[2]
  if height is None or width is None:
    raise ValueError(f'images need static height and width, got {images.shape}')
  batch = tf.shape(images)[0]
  offset_seed, flip_seed = tf.unstack(tf.random.split(seed, num=2))
  offsets = tf.random.stateless_uniform(
      [batch, 2], seed=offset_seed, minval=0, maxval=2 * pad + 1,
      dtype=tf.int32)
  flip = tf.random.stateless_uniform(
      [batch, 1], seed=flip_seed, minval=0, maxval=2, dtype=tf.int32) > 0
  # A crop (and its mirror image) is a gather of rows, then of columns.
  rows = offsets[:, :1] + tf.range(height)[tf.newaxis]  # [B, H]
  cols = offsets[:, 1:] + tf.where(
      flip, tf.range(width - 1, -1, -1)[tf.newaxis],
      tf.range(width)[tf.newaxis])  # [B, W]
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  cropped = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W+2p, C]
  return tf.gather(cropped, cols, axis=2, batch_dims=1)  # [B, H, W, C]


# Arrays -> {split: (x, y) tensors}, so that repeated pipelines over the same
# Arrays share one host copy of the images instead of one per dataset.
_TENSOR_CACHE: 'weakref.WeakKeyDictionary[Arrays, dict]' = (
    weakref.WeakKeyDictionary())


def _as_tensors(arrays: Arrays, split: str) -> tuple[tf.Tensor, tf.Tensor]:
  """The split's images (uint8 as stored, or float32) and labels as host tensors."""
  by_split = _TENSOR_CACHE.setdefault(arrays, {})
  if split not in by_split:
    x, y = arrays.split(split)
    x = x.raw if isinstance(x, UnitImages) else x
    # tf.data runs on the host; keep the images there even when called under
    # a GPU device scope.
    with tf.device('/cpu:0'):
      by_split[split] = (tf.constant(x), tf.constant(y))
  return by_split[split]


def _to_unit(images: tf.Tensor) -> tf.Tensor:
  """A gathered batch as float32 in [0, 1]: uint8 pixels / 255 (as `scale_to_unit`)."""
  if images.dtype == tf.uint8:
    return tf.cast(images, tf.float32) / 255.0
  return images


def _check_positive_int(value, name: str) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or (
      value <= 0):
    raise ValueError(f'{name} must be a positive int, got {value!r}')


def _check_nonnegative_int(value, name: str) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or (
      value < 0):
    raise ValueError(f'{name} must be a non-negative int, got {value!r}')


def _check_seed(seed) -> None:
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not (
      0 <= seed < 2**63):
    raise ValueError(f'seed must be an int in [0, 2**63), got {seed!r}')
