"""Datasets as deterministic, resumable tf.data pipelines.

Images are float32 in [0, 1], shaped [N, H, W, C] (MNIST gets a channel axis);
labels are int32 class ids, shaped [N]. In memory (`Arrays`) the images stay
uint8, a quarter of the float32 size (CIFAR-10's train split: 154 MB, not
614 MB); the pipelines scale each batch by 1/255 in float32 after gathering it,
and reading an `Arrays` image array (`UnitImages`) scales what is read, so
every consumer sees the same float32 values as `x.astype(np.float32) / 255`.

Where the data comes from (`load_arrays(..., source=...)`), all within one
directory `data_dir` (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets):

* 'npz': the file `<data_dir>/<name>.npz` holding the uint8 arrays `x_train`,
  `y_train`, `x_test`, `y_test` (raw 0-255 pixels, integer labels). This is the
  offline default: `shared/data/` holds `mnist.npz` and `cifar10.npz`.
* 'tfds': a TFDS dataset already prepared under `data_dir`
  (`tfds build mnist --data_dir=...`). TFDS is never asked to download unless
  `download=True`; offline, a download attempt retries for minutes.
* 'auto': the npz file if present, else a prepared TFDS dataset, else (only if
  `download=True`) a TFDS download, else `DataNotFoundError` at once, naming
  every path looked for.

Training batches are a pure function of (seed, step): epoch `e` visits the
examples in the order `np.random.default_rng([seed, e]).permutation(N)`, so a
run restored at step k rebuilds exactly the stream it would have seen, by
passing `start_step=k`. Do not checkpoint the tf.data iterator: it would
serialise the captured image tensors.
"""

import dataclasses
import functools
import os
import weakref
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a supported dataset."""
  name: str
  image_shape: tuple[int, int, int]  # (H, W, C)
  num_classes: int
  num_train: int  # size of the standard training split
  num_test: int  # size of the standard test split
  tfds_name: str


DATASETS = {
    'mnist': DatasetInfo(
        name='mnist', image_shape=(28, 28, 1), num_classes=10,
        num_train=60000, num_test=10000, tfds_name='mnist'),
    'cifar10': DatasetInfo(
        name='cifar10', image_shape=(32, 32, 3), num_classes=10,
        num_train=50000, num_test=10000, tfds_name='cifar10'),
    # MNIST digits at known boxes on 64x64 cluttered canvases, drawn from mnist
    # (see aad_tf.boxed_digits); for the attention analysis (aad_tf.analysis).
    'boxed_mnist': DatasetInfo(
        name='boxed_mnist', image_shape=(64, 64, 1), num_classes=10,
        num_train=12000, num_test=2000, tfds_name='mnist'),
    # ILSVRC 2012, streamed from a TFDS directory prepared from the manual
    # download (see `imagenet_builder`); never loaded into memory. Its test
    # split is the 50000-image validation set.
    'imagenet': DatasetInfo(
        name='imagenet', image_shape=(224, 224, 3), num_classes=1000,
        num_train=1281167, num_test=50000, tfds_name='imagenet2012'),
}

# Datasets read as a stream of files (imagenet_* functions), not as Arrays.
STREAMED_DATASETS = ('imagenet',)

SOURCES = ('auto', 'npz', 'tfds')
AUGMENTATIONS = (None, 'pad_crop_flip')
SPLITS = ('train', 'test')
NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')

_LOAD_CACHE_SIZE = 4


class DataNotFoundError(FileNotFoundError):
  """No local copy of a dataset was found and downloading was not allowed."""


class UnitImages:
  """Read-only uint8 images [N, H, W, C] that read as float32 in [0, 1].

  Indexing scales only what it selects (`images[:100]` is a float32
  [100, H, W, C] array equal to `raw[:100].astype(np.float32) / 255`), so
  code written for float32 arrays keeps working while the whole split stays
  uint8 in memory; `np.asarray(images)` scales everything. `raw` is the
  uint8 array itself, which the tf.data pipelines capture.
  """

  def __init__(self, raw: np.ndarray):
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 4:
      raise ValueError(f'UnitImages holds uint8 [N, H, W, C] arrays, got '
                       f'{getattr(raw, "dtype", type(raw))} {getattr(raw, "shape", "")}')
    raw = raw.view()
    raw.flags.writeable = False
    self._raw = raw

  @property
  def raw(self) -> np.ndarray:
    """The uint8 pixels, read-only."""
    return self._raw

  @property
  def shape(self) -> tuple[int, ...]:
    return self._raw.shape

  @property
  def ndim(self) -> int:
    return self._raw.ndim

  @property
  def dtype(self) -> np.dtype:
    """The dtype that reading gives (float32), not the stored uint8."""
    return np.dtype(np.float32)

  def __len__(self) -> int:
    return len(self._raw)

  def __getitem__(self, index):
    return scale_to_unit(self._raw[index])

  def __setitem__(self, index, value):
    raise ValueError('assignment destination is read-only (UnitImages)')

  def __array__(self, dtype=None, copy=None):
    del copy  # Always a new array.
    images = self[...]
    return images if dtype is None else images.astype(dtype, copy=False)

  def copy(self) -> np.ndarray:
    """All images as a new, writable float32 array."""
    return self[...]

  def __repr__(self) -> str:
    return f'UnitImages(shape={self.shape}, stored as uint8)'


def scale_to_unit(pixels):
  """uint8 pixels -> float32 in [0, 1], `pixels.astype(np.float32) / 255` (one allocation)."""
  return np.divide(pixels, np.float32(255), dtype=np.float32)


# eq=False: compare and hash by identity; element-wise `==` on arrays is
# meaningless here and would make the dataclass unhashable.
@dataclasses.dataclass(frozen=True, eq=False)
class Arrays:
  """A dataset held in memory (read-only arrays).

  Images are given either as float32 arrays in [0, 1] or as uint8 arrays of raw
  pixels; uint8 ones are kept as they are, wrapped in `UnitImages`, and read as
  float32 in [0, 1] (what `load_arrays` returns).

  Attributes:
    x_train: [N_train, H, W, C] in [0, 1]: a float32 array or `UnitImages`.
    y_train: int32 [N_train] class ids.
    x_test: [N_test, H, W, C] in [0, 1]: a float32 array or `UnitImages`.
    y_test: int32 [N_test] class ids.
  """
  x_train: 'np.ndarray | UnitImages'
  y_train: np.ndarray
  x_test: 'np.ndarray | UnitImages'
  y_test: np.ndarray

  def __post_init__(self):
    for name in ('x_train', 'x_test'):
      images = getattr(self, name)
      if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        object.__setattr__(self, name, UnitImages(images))

  @property
  def num_train(self) -> int:
    return len(self.x_train)

  @property
  def num_test(self) -> int:
    return len(self.x_test)

  def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (x, y) of 'train' or 'test'."""
    if split not in SPLITS:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if split == 'train':
      return self.x_train, self.y_train
    return self.x_test, self.y_test


def get_info(name: str) -> DatasetInfo:
  """Returns the DatasetInfo of `name`; ValueError for an unknown name."""
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(
        f'Unknown dataset {name!r}; valid names: {sorted(DATASETS)}') from None


def default_data_dir() -> str:
  """TFDS's default data directory: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.path.expanduser(
      os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def load_arrays(name: str, *, data_dir: Optional[str] = None,
                source: str = 'auto', download: bool = False) -> Arrays:
  """Loads a whole dataset into memory (cached in-process).

  Args:
    name: a key of DATASETS.
    data_dir: directory holding `<name>.npz` or a prepared TFDS dataset;
      None means `default_data_dir()`.
    source: 'auto', 'npz' or 'tfds' (see the module docstring).
    download: allow TFDS to download and prepare the dataset in `data_dir`.

  Returns:
    Arrays with x [N, H, W, C] in [0, 1] (`UnitImages`: uint8 in memory, read
    as float32) and y int32 [N].

  Raises:
    DataNotFoundError: no data where it was looked for.
    ValueError: bad arguments, or a file that is unreadable or holds arrays of
      the wrong shape, dtype or label range.
  """
  info = get_info(name)
  if name in STREAMED_DATASETS:
    raise ValueError(
        f'{name} is streamed from files, not loaded into memory: use '
        f'imagenet_builder and imagenet_train_dataset / imagenet_eval_dataset.')
  if name == 'boxed_mnist':
    # Drawn from MNIST; imported here because boxed_digits imports this module.
    from aad_tf import boxed_digits  # pylint: disable=g-import-not-at-top
    return boxed_digits.load(data_dir, source=source, download=download).arrays
  if source not in SOURCES:
    raise ValueError(f'source must be one of {SOURCES}, got {source!r}')
  data_dir = os.path.abspath(os.fspath(
      default_data_dir() if data_dir is None else data_dir))
  npz_path = os.path.join(data_dir, f'{name}.npz')
  tfds_dir = os.path.join(data_dir, info.tfds_name)

  if source == 'npz' or (source == 'auto' and os.path.isfile(npz_path)):
    if not os.path.isfile(npz_path):
      raise DataNotFoundError(_not_found_message(info, [npz_path], data_dir))
    stat = os.stat(npz_path)
    # The file's size and mtime are in the key so that a replaced file is
    # read again.
    return _load_npz_cached(name, npz_path, stat.st_size, stat.st_mtime_ns)

  looked_for = ([npz_path] if source == 'auto' else []) + [tfds_dir + os.sep]
  if not (download or os.path.isdir(tfds_dir)):
    raise DataNotFoundError(_not_found_message(info, looked_for, data_dir))
  return _load_tfds_cached(name, data_dir, download, tuple(looked_for))


def clear_cache() -> None:
  """Forgets the datasets that load_arrays has cached."""
  _load_npz_cached.cache_clear()
  _load_tfds_cached.cache_clear()


def _not_found_message(info: DatasetInfo, looked_for: list[str],
                       data_dir: str) -> str:
  paths = '\n'.join(f'  {p}' for p in looked_for)
  return (
      f'No data for dataset {info.name!r}. Looked for:\n{paths}\n'
      f'To provide it, do one of:\n'
      f'  - put {info.name}.npz, holding uint8 arrays '
      f'{", ".join(NPZ_KEYS)}, in --data_dir (now {data_dir});\n'
      f'  - prepare the TFDS dataset {info.tfds_name!r} there '
      f'(tfds build {info.tfds_name} --data_dir={data_dir});\n'
      f'  - pass --download (download=True) to let TFDS download it.')


@functools.lru_cache(maxsize=_LOAD_CACHE_SIZE)
def _load_npz_cached(name: str, path: str, size: int,
                     mtime_ns: int) -> Arrays:
  del size, mtime_ns  # Only part of the cache key.
  info = get_info(name)
  raw = _read_npz(path)
  arrays = _to_arrays(raw, info, origin=path)
  _log_loaded(info, arrays, path)
  return arrays


def _read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads the four NPZ_KEYS arrays of an .npz file; ValueError if unreadable."""
  # A damaged file surfaces as almost any exception from zipfile, zlib or numpy's
  # header parser (BadZipFile, zlib.error, EOFError, SyntaxError,
  # tokenize.TokenError, ...): report them all as one bad-file error.
  read_errors = Exception
  try:
    loaded = np.load(path, allow_pickle=False)
  except read_errors as e:
    raise ValueError(
        f'{path}: cannot read as an .npz archive ({type(e).__name__}: {e}); '
        f'the file may be truncated or corrupt') from e
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise ValueError(
        f'{path}: expected an .npz archive holding {", ".join(NPZ_KEYS)}, '
        f'found a single {type(loaded).__name__}')
  with loaded:
    missing = [k for k in NPZ_KEYS if k not in loaded.files]
    if missing:
      raise ValueError(
          f'{path}: missing arrays {missing}; it holds {sorted(loaded.files)}, '
          f'expected {list(NPZ_KEYS)}')
    try:
      return {k: loaded[k] for k in NPZ_KEYS}
    except read_errors as e:
      raise ValueError(
          f'{path}: cannot read its arrays ({type(e).__name__}: {e}); '
          f'the file may be truncated or corrupt') from e


@functools.lru_cache(maxsize=_LOAD_CACHE_SIZE)
def _load_tfds_cached(name: str, data_dir: str, download: bool,
                      looked_for: tuple[str, ...]) -> Arrays:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  info = get_info(name)
  builder = tfds.builder(info.tfds_name, data_dir=data_dir)
  if not builder.is_prepared():
    if not download:
      raise DataNotFoundError(
          _not_found_message(info, list(looked_for), data_dir) +
          f'\n({builder.data_dir} holds no prepared dataset.)')
    logging.info('Downloading %s with TFDS into %s', info.tfds_name, data_dir)
    builder.download_and_prepare()
  raw = {}
  for split in SPLITS:
    x, y = tfds.as_numpy(builder.as_dataset(
        split=split, batch_size=-1, as_supervised=True, shuffle_files=False))
    raw[f'x_{split}'], raw[f'y_{split}'] = x, y
  arrays = _to_arrays(raw, info, origin=builder.data_dir)
  _log_loaded(info, arrays, f'TFDS {builder.data_dir}')
  return arrays


def _to_arrays(raw: dict[str, np.ndarray], info: DatasetInfo,
               origin: str) -> Arrays:
  """Validates raw uint8 images and integer labels; keeps the images uint8."""
  out = {}
  for split in SPLITS:
    x, y = raw[f'x_{split}'], raw[f'y_{split}']
    if x.dtype != np.uint8:
      raise ValueError(
          f'{origin}: x_{split} has dtype {x.dtype}, expected uint8 '
          f'(raw 0-255 pixels)')
    if x.ndim == 3 and info.image_shape[-1] == 1:
      x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[1:] != info.image_shape or not len(x):
      raise ValueError(
          f'{origin}: x_{split} has shape {x.shape}, expected '
          f'[N, {", ".join(map(str, info.image_shape))}] with N > 0 for '
          f'{info.name}')
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(
          f'{origin}: y_{split} has dtype {y.dtype}, expected integer labels')
    if y.ndim == 2 and y.shape[1] == 1:  # As keras.datasets gives CIFAR.
      y = y[:, 0]
    if y.shape != (len(x),):
      raise ValueError(
          f'{origin}: y_{split} has shape {y.shape}, expected ({len(x)},) '
          f'to match x_{split}')
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= info.num_classes:
      raise ValueError(
          f'{origin}: y_{split} has labels in [{low}, {high}], expected '
          f'[0, {info.num_classes - 1}]')
    yi = y.astype(np.int32)
    # The arrays are cached and shared: make accidental mutation an error.
    yi.flags.writeable = False
    out[f'x_{split}'], out[f'y_{split}'] = UnitImages(np.ascontiguousarray(x)), yi
  return Arrays(**out)


def _log_loaded(info: DatasetInfo, arrays: Arrays, origin: str) -> None:
  logging.info('Loaded %s from %s: %d train, %d test examples of shape %s',
               info.name, origin, arrays.num_train, arrays.num_test,
               info.image_shape)
  if (arrays.num_train, arrays.num_test) != (info.num_train, info.num_test):
    logging.warning('%s: the standard split has %d train, %d test examples',
                    info.name, info.num_train, info.num_test)


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
                  augment: Optional[str] = None,
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
                 num_examples: Optional[int] = None,
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


# ---------------------------------------------------------------------------
# ImageNet 2012: a TFDS dataset prepared once from the manual download, then
# streamed (JPEG bytes are decoded per example, after sharding and skipping).

IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
IMAGENET_AUGMENTATIONS = (None, 'inception_crop_flip')
IMAGENET_SHUFFLE_BUFFER = 10_000
# Evaluation crops the centre image_size / (image_size + 32) of the shorter
# side (0.875 at 224), the usual ImageNet protocol.
_CENTER_CROP_PADDING = 32


def imagenet_builder(data_dir: Optional[str] = None, *,
                     manual_dir: Optional[str] = None):
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
  builder = tfds.builder(get_info('imagenet').tfds_name, data_dir=data_dir)
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
                      shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
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
                           augment: Optional[str] = 'inception_crop_flip',
                           input_context: Optional[
                               tf.distribute.InputContext] = None,
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
                          num_examples: Optional[int] = None,
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
