"""Datasets loaded into memory: uint8 images that read as float32, npz / TFDS loading, caching.

Images are float32 in [0, 1], shaped [N, H, W, C] (MNIST gets a channel axis);
labels are int32 class ids, shaped [N]. In memory (`Arrays`) the images stay
uint8, a quarter of the float32 size (CIFAR-10's train split: 154 MB, not
614 MB); the pipelines scale each batch by 1/255 in float32 after gathering it,
and reading an `Arrays` image array (`UnitImages`) scales what is read, so
every consumer sees the same float32 values as `x.astype(np.float32) / 255`.

`load_arrays(name, ...)` calls the loader of the dataset's registry entry and checks what it
returns against the entry. For MNIST and CIFAR-10 the loader is `load_local`, which reads, all
within one directory `data_dir` (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets), by
`source`:

* 'npz': the file `<data_dir>/<name>.npz` holding the uint8 arrays `x_train`,
  `y_train`, `x_test`, `y_test` (raw 0-255 pixels, integer labels). This is the
  offline default: `shared/data/` holds `mnist.npz` and `cifar10.npz`.
* 'tfds': a TFDS dataset already prepared under `data_dir`
  (`tfds build mnist --data_dir=...`). TFDS is never asked to download unless
  `download=True`; offline, a download attempt retries for minutes.
* 'auto': the npz file if present, else a prepared TFDS dataset, else (only if
  `download=True`) a TFDS download, else `DataNotFoundError` at once, naming
  every path looked for.
"""

import dataclasses
import functools
import os

from absl import logging
import numpy as np

from aad_tf.data import registry
from aad_tf.data.registry import DatasetInfo

SOURCES = ('auto', 'npz', 'tfds')
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


def default_data_dir() -> str:
  """TFDS's default data directory: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.path.expanduser(
      os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def load_arrays(name: str, *, data_dir: str | None = None,
                source: str = 'auto', download: bool = False) -> Arrays:
  """Loads a whole registered dataset into memory (the loader of its registry entry).

  Args:
    name: a registered dataset (`registry.available_datasets()`), not a streamed one.
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
  info = registry.get_info(name)
  if info.streamed:
    raise ValueError(
        f'{name} is streamed from files, not loaded into memory: use '
        f'imagenet_builder and imagenet_train_dataset / imagenet_eval_dataset.')
  if source not in SOURCES:
    raise ValueError(f'source must be one of {SOURCES}, got {source!r}')
  arrays = info.loader(info, data_dir=data_dir, source=source, download=download)
  if not isinstance(arrays, Arrays):
    raise ValueError(f'the loader of {name} returned {type(arrays).__name__}, not Arrays')
  for split in SPLITS:
    x, y = arrays.split(split)
    if tuple(x.shape[1:]) != info.image_shape or len(y) != len(x):
      raise ValueError(f'the loader of {name} gave {split} images of shape {x.shape} and '
                       f'{len(y)} labels; the registry says [N, '
                       f'{", ".join(map(str, info.image_shape))}]')
  return arrays


def load_local(info: DatasetInfo, *, data_dir: str | None = None, source: str = 'auto',
               download: bool = False) -> Arrays:
  """The loader of datasets kept as `<data_dir>/<name>.npz` or a TFDS dataset (cached in-process).

  See the module docstring for `source` and `download`.
  """
  name = info.name
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
  info = registry.get_info(name)
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

  info = registry.get_info(name)
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

