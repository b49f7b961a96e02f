"""Boxed MNIST (`boxed_mnist`): MNIST digits at known positions and scales on cluttered canvases.

An offline dataset with exact ground-truth boxes for the attention analysis of the paper's Sec. 3
(`aad_tf.analysis`), needing nothing but `mnist.npz`. Each canvas (64x64 by default) holds

* one MNIST digit, rescaled to a random side in [min_digit_size, max_digit_size] pixels and placed
  at a random position; its label is the digit's label;
* clutter: a random number of fragments (random square crops of other digits of the same MNIST
  split, at their native scale), placed only where they do not touch the digit's box, so the box
  holds the object and the clutter lies outside it;
* uniform background noise in [0, noise].

The box is the tight box of the digit's ink (pixels of the rescaled digit above `ink_threshold`
times its peak), in pixel coordinates `(ymin, xmin, ymax, xmax)` with ymax and xmax exclusive:
the digit's ink lies exactly in rows ymin..ymax-1 and columns xmin..xmax-1. It is known exactly
because the generator placed the digit there.

Everything is a pure function of (the MNIST arrays, seed): canvas i of a split uses digit i of the
same MNIST split (train canvases from MNIST train digits, test canvases from MNIST test digits),
fragments of that split's digits and the generator `np.random.default_rng([seed, split_index, i])`,
so a prefix of a split can be drawn alone (`draw_split`).

    boxed = boxed_mnist.load(data_dir='shared/data')        # BoxedDigits, cached
    boxed.arrays                                            # data.Arrays for training
    boxed.boxes('test')                                     # int32 [N, 4]
    boxed_mnist.box_dataset(boxed, batch_size=100)          # tf.data of (x, y, box)

Its registry entry (`catalog.py`) has `load_arrays` as loader, so `aad_tf.data.load_arrays(
'boxed_mnist', ...)` returns `load(...).arrays` and the dataset trains with
`trainers.main --dataset=boxed_mnist` like any other.
"""

import dataclasses
import functools

from absl import logging
import numpy as np
import tensorflow as tf

from aad_tf.data import arrays as arrays_lib
from aad_tf.data import pipelines

NAME = 'boxed_mnist'
SPLIT_INDEX = {'train': 0, 'test': 1}


@dataclasses.dataclass(frozen=True)
class CanvasConfig:
  """How canvases are drawn.

  Attributes:
    canvas_size: side S of the square canvas, pixels.
    min_digit_size: smallest side of the rescaled 28x28 digit, pixels.
    max_digit_size: largest side (inclusive), at most canvas_size.
    min_fragments: fewest clutter fragments per canvas.
    max_fragments: most clutter fragments per canvas (inclusive).
    min_fragment_size: smallest side of a square fragment crop, pixels (at most 28).
    max_fragment_size: largest side (inclusive, at most 28).
    noise: background noise is uniform in [0, noise].
    ink_threshold: a pixel is ink if above this fraction of the rescaled digit's peak.
  """
  canvas_size: int = 64
  min_digit_size: int = 24
  max_digit_size: int = 40
  min_fragments: int = 2
  max_fragments: int = 4
  min_fragment_size: int = 6
  max_fragment_size: int = 10
  noise: float = 0.05
  ink_threshold: float = 0.1

  def __post_init__(self):
    if not 0 < self.min_digit_size <= self.max_digit_size <= self.canvas_size:
      raise ValueError(
          f'Need 0 < min_digit_size <= max_digit_size <= canvas_size, got '
          f'{self.min_digit_size}, {self.max_digit_size}, {self.canvas_size}.')
    if not 0 <= self.min_fragments <= self.max_fragments:
      raise ValueError(f'Need 0 <= min_fragments <= max_fragments, got {self.min_fragments}, '
                       f'{self.max_fragments}.')
    if not 0 < self.min_fragment_size <= self.max_fragment_size <= 28:
      raise ValueError(f'Need 0 < min_fragment_size <= max_fragment_size <= 28, got '
                       f'{self.min_fragment_size}, {self.max_fragment_size}.')
    if not 0.0 <= self.noise <= 1.0:
      raise ValueError(f'noise must be in [0, 1], got {self.noise}.')
    if not 0.0 <= self.ink_threshold < 1.0:
      raise ValueError(f'ink_threshold must be in [0, 1), got {self.ink_threshold}.')


# The registered dataset: its registry entry (`catalog.py`) reads these sizes. The clutter is
# light enough that Madry et al.'s LeNet learns the task in a few hundred steps (about 60% test
# accuracy after 150 steps of batch 100; with 3-6 fragments of 8-12 pixels and noise 0.15 it was
# still near chance at 150 steps).
DEFAULT_CONFIG = CanvasConfig()
NUM_TRAIN = 12000
NUM_TEST = 2000


@dataclasses.dataclass(frozen=True, eq=False)
class BoxedDigits:
  """Canvases, labels and boxes of both splits.

  Attributes:
    arrays: `arrays.Arrays`: x float32 [N, S, S, 1] in [0, 1], y int32 [N].
    boxes_train: int32 [N_train, 4] (ymin, xmin, ymax, xmax), max exclusive.
    boxes_test: int32 [N_test, 4].
    config: the CanvasConfig that drew them.
  """
  arrays: arrays_lib.Arrays
  boxes_train: np.ndarray
  boxes_test: np.ndarray
  config: CanvasConfig

  def boxes(self, split: str) -> np.ndarray:
    """The int32 [N, 4] boxes of 'train' or 'test'."""
    if split not in SPLIT_INDEX:
      raise ValueError(f'split must be one of {tuple(SPLIT_INDEX)}, got {split!r}')
    return self.boxes_train if split == 'train' else self.boxes_test


def ink_box(digit: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
  """The tight box (ymin, xmin, ymax, xmax), max exclusive, of pixels > threshold * max."""
  ink = digit > threshold * float(digit.max())
  rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
  if not rows.size:
    raise ValueError('The digit has no ink above the threshold.')
  return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _resize(digits: np.ndarray, size: int) -> np.ndarray:
  """Bilinear, antialiased resize of [N, 28, 28] digits to [N, size, size] in [0, 1]."""
  resized = tf.image.resize(digits[..., None].astype(np.float32), (size, size),
                            method='bilinear', antialias=True)
  return np.clip(resized.numpy()[..., 0], 0.0, 1.0)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw(digits: np.ndarray, *, seed: int, split_index: int = 0,
         config: CanvasConfig = DEFAULT_CONFIG, clutter_digits: np.ndarray | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
  """Draws one canvas per digit, with fragments of other digits as clutter.

  Args:
    digits: float [N, 28, 28] or [N, 28, 28, 1] MNIST digits in [0, 1].
    seed: non-negative int; canvas i uses `np.random.default_rng([seed, split_index, i])`.
    split_index: distinguishes the splits' random streams.
    config: the canvas settings.
    clutter_digits: [M, 28, 28(, 1)] digits to cut fragments from, of which `digits` are the
      first N (default: `digits`); canvas i never takes fragments of clutter digit i.

  Returns:
    (canvases float32 [N, S, S, 1] in [0, 1] quantised to multiples of 1/255,
     boxes int32 [N, 4] (ymin, xmin, ymax, xmax), max exclusive).
  """
  digits = _as_digits(digits, 'digits')
  clutter_digits = digits if clutter_digits is None else _as_digits(clutter_digits,
                                                                    'clutter_digits')
  if len(clutter_digits) < max(len(digits), 2):
    raise ValueError(f'Need at least max(N, 2) clutter digits, got {len(clutter_digits)}.')
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative int, got {seed!r}.')
  num, side = len(digits), config.canvas_size
  rngs = [np.random.default_rng([seed, split_index, i]) for i in range(num)]
  sizes = np.array([rng.integers(config.min_digit_size, config.max_digit_size + 1)
                    for rng in rngs])
  canvases = np.zeros([num, side, side], np.float32)
  boxes = np.zeros([num, 4], np.int32)
  # Rescale all digits of one size together; then place each with its own generator.
  for size in np.unique(sizes):
    members = np.flatnonzero(sizes == size)
    for i, digit in zip(members, _resize(digits[members], int(size))):
      rng = rngs[i]
      top, left = rng.integers(0, side - size + 1, size=2)
      canvases[i, top:top + size, left:left + size] = digit
      ymin, xmin, ymax, xmax = ink_box(digit, config.ink_threshold)
      boxes[i] = (top + ymin, left + xmin, top + ymax, left + xmax)
  for i, rng in enumerate(rngs):
    _add_clutter(canvases[i], tuple(boxes[i]), clutter_digits, rng, exclude=i, config=config)
    canvases[i] = np.maximum(canvases[i], rng.uniform(0.0, config.noise, [side, side]))
  canvases = np.round(np.clip(canvases, 0.0, 1.0) * 255.0) / np.float32(255.0)
  return canvases.astype(np.float32)[..., None], boxes


def _as_digits(digits, name: str) -> np.ndarray:
  digits = np.asarray(digits, np.float32)
  if digits.ndim == 4 and digits.shape[-1] == 1:
    digits = digits[..., 0]
  if digits.ndim != 3 or digits.shape[1:] != (28, 28) or not len(digits):
    raise ValueError(f'{name} must be [N > 0, 28, 28], got {digits.shape}.')
  return digits


def _add_clutter(canvas: np.ndarray, box, digits: np.ndarray, rng: np.random.Generator, *,
                 exclude: int, config: CanvasConfig) -> None:
  """Pastes fragments of other digits (max-composited) outside the box, one pixel clear of it."""
  side = canvas.shape[0]
  keep_out = (box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1)
  for _ in range(rng.integers(config.min_fragments, config.max_fragments + 1)):
    size = int(rng.integers(config.min_fragment_size, config.max_fragment_size + 1))
    source = int(rng.integers(0, len(digits) - 1))
    source += source >= exclude  # Never the canvas's own digit.
    # A crop with little ink is no clutter: try a few offsets, keep the inkiest.
    offsets = rng.integers(0, 28 - size + 1, size=(4, 2))
    crops = [digits[source, r:r + size, c:c + size] for r, c in offsets]
    fragment = crops[int(np.argmax([crop.sum() for crop in crops]))]
    for _ in range(20):  # Rejection sampling of a position clear of the box.
      top, left = (int(v) for v in rng.integers(0, side - size + 1, size=2))
      if not _overlaps((top, left, top + size, left + size), keep_out):
        region = canvas[top:top + size, left:left + size]
        np.maximum(region, fragment, out=region)
        break


def build(mnist: arrays_lib.Arrays, *, num_train: int = NUM_TRAIN, num_test: int = NUM_TEST,
          seed: int = 0, config: CanvasConfig = DEFAULT_CONFIG) -> BoxedDigits:
  """Draws the boxed-digits splits from the first num_train / num_test MNIST digits of each split.

  Args:
    mnist: MNIST `data.Arrays` (x [N, 28, 28, 1] in [0, 1]).
    num_train: canvases drawn from MNIST train.
    num_test: canvases drawn from MNIST test.
    seed: the generator seed.
    config: canvas settings.

  Returns:
    BoxedDigits with read-only arrays.
  """
  out = {split: draw_split(mnist, split, num_examples=count, seed=seed, config=config)
         for split, count in (('train', num_train), ('test', num_test))}
  arrays = arrays_lib.Arrays(x_train=out['train'][0], y_train=out['train'][1],
                           x_test=out['test'][0], y_test=out['test'][1])
  return BoxedDigits(arrays, out['train'][2], out['test'][2], config)


def draw_split(mnist: arrays_lib.Arrays, split: str, *, num_examples: int, seed: int = 0,
               config: CanvasConfig = DEFAULT_CONFIG
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The first `num_examples` canvases of one split, identical to those of `build`.

  Canvas i depends only on (seed, split, its digit i, the split's digits as clutter), so a
  prefix is drawn without the rest.

  Returns:
    Read-only (x float32 [N, S, S, 1], y int32 [N], boxes int32 [N, 4]).
  """
  if split not in SPLIT_INDEX:
    raise ValueError(f'split must be one of {tuple(SPLIT_INDEX)}, got {split!r}')
  x, y = mnist.split(split)
  if not 2 <= num_examples <= len(x):
    raise ValueError(f'num_{split} must be in [2, {len(x)}], got {num_examples}.')
  canvases, boxes = draw(x[:num_examples], seed=seed, split_index=SPLIT_INDEX[split],
                         config=config, clutter_digits=x)
  labels = np.array(y[:num_examples], np.int32)
  for array in (canvases, boxes, labels):
    array.flags.writeable = False
  return canvases, labels, boxes


def load(data_dir: str | None = None, *, source: str = 'auto', download: bool = False,
         seed: int = 0) -> BoxedDigits:
  """The registered boxed-MNIST dataset (12000 train, 2000 test canvases of 64x64), cached.

  Args:
    data_dir: where MNIST lives (`mnist.npz` or a prepared TFDS dataset), as for
      `data.load_arrays`.
    source, download: as for `data.load_arrays('mnist', ...)`.
    seed: the canvas generator seed.
  """
  mnist = arrays_lib.load_arrays('mnist', data_dir=data_dir, source=source, download=download)
  return _load_cached(mnist, seed)


@functools.lru_cache(maxsize=2)
def _load_cached(mnist: arrays_lib.Arrays, seed: int) -> BoxedDigits:
  boxed = build(mnist, seed=seed)
  logging.info('Drew %s: %d train, %d test canvases of %dx%d (seed %d).', NAME,
               boxed.arrays.num_train, boxed.arrays.num_test, DEFAULT_CONFIG.canvas_size,
               DEFAULT_CONFIG.canvas_size, seed)
  return boxed


def box_dataset(boxed: BoxedDigits, *, batch_size: int, num_examples: int | None = None,
                split: str = 'test') -> tf.data.Dataset:
  """The first `num_examples` canvases of `split` in order, with their boxes.

  Returns:
    tf.data.Dataset of (x float32 [B, S, S, 1], y int32 [B], box int32 [B, 4]).
  """
  images = pipelines.eval_dataset(boxed.arrays, batch_size=batch_size,
                                 num_examples=num_examples, split=split)
  boxes = boxed.boxes(split)[:num_examples]
  box_batches = tf.data.Dataset.from_tensor_slices(boxes).batch(batch_size)
  return tf.data.Dataset.zip(images, box_batches).map(lambda xy, box: (*xy, box))


def load_arrays(info, *, data_dir: str | None = None, source: str = 'auto',
                download: bool = False) -> arrays_lib.Arrays:
  """The registry loader: the canvases of `load` (seed 0) as Arrays."""
  del info  # The registered dataset is the one of DEFAULT_CONFIG, NUM_TRAIN, NUM_TEST.
  return load(data_dir, source=source, download=download).arrays
