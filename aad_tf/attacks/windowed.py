"""Forward passes of images that differ from cached ones only inside one window (for Square).

AutoAttack's Square Attack changes, at each iteration, the same s x s window of every image it
still attacks, and late in the attack s is 1-3 pixels. For a convolutional network most of a
forward pass then recomputes activations that cannot have changed. `plan` reads a Keras model
whose layers form a chain

    spatial part:  Conv2D (any stride, dilation 1, 'same' or 'valid'), MaxPooling2D ('same' or
                   'valid'), AveragePooling2D ('valid'), and layers that act on each pixel alone
                   (activations, BatchNormalization over channels, Dropout, Rescaling, ...);
    linear head:   Flatten (+ Dropout or activations) + Dense, or GlobalAveragePooling2D;
    tail:          whatever follows, run as it is,

and returns a `WindowedModel`. The spatial part is cut into segments that end at each
downsampling layer (stride > 1) and at its end; the images and each segment's output are cached
for the current best images (`full`). For a changed window (`query`) each segment is recomputed
only on the region the window reaches (its cone through the receptive fields: a 'same' k x k
convolution grows it by k - 1 pixels, a 2 x 2 pooling halves it), from a crop of the cached
segment input with the changed region written in; the head is updated by the change,
Dense(f + d) = Dense(f) + d W[the rows the region feeds] (GlobalAveragePooling2D likewise); and
`commit` writes the regions of the accepted proposals into the caches. Every crop, region and
padding depends only on the window's corner and side, so they are tabulated per image axis when
the plan is made and a query reads them with one gather per axis. On the MNIST LeNet with a
1-3 pixel window a query costs 40-60 % of a forward pass in the middle of the image, less
near its edges (`benchmarks/windowed_square.py`, `docs/results/windowed_square_cpu.json`).
Python control flow here runs on static structure only, so AutoGraph is told to leave it.

The head's cache accumulates float rounding over accepted updates: Square recomputes the state
exactly with `full` every `REFRESH_EVERY` queries and re-checks with the model itself every
example that a windowed query calls misclassified. Recomputed regions equal the model's own
activations to float rounding.

Anything else (no Keras model given, a graph that is not a chain, a first layer that is not one
of the above, a non-float32 dtype policy) gets the plain plan: the patched images through
`model_fn`, one whole forward pass per query. `plan` also checks numerically, each time it is
called, that windowed logits equal model_fn's on probe images and windows (corners, edges and
the middle, sides 1 to H - 1), and falls back to the plain plan with a logged reason if they do
not or if the probe fails.
"""

import dataclasses
import weakref
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

REFRESH_EVERY = 500  # Square recomputes the state exactly every this many queries
_TOLERANCE = 1e-3  # probe check: |windowed - model| <= tol * (1 + max |model logits|)

_POINTWISE = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
              keras.layers.ELU, keras.layers.Dropout, keras.layers.SpatialDropout2D,
              keras.layers.GaussianNoise, keras.layers.GaussianDropout,
              keras.layers.AlphaDropout, keras.layers.Rescaling, keras.layers.Identity,
              keras.layers.ActivityRegularization)


def _is_elementwise(layer) -> bool:
  """Acts on each number alone, the same everywhere: commutes with Flatten."""
  if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                        keras.layers.Dropout, keras.layers.GaussianNoise,
                        keras.layers.GaussianDropout, keras.layers.AlphaDropout,
                        keras.layers.Identity, keras.layers.ActivityRegularization)):
    return not isinstance(layer, keras.layers.SpatialDropout2D)
  if isinstance(layer, keras.layers.Activation):
    return 'softmax' not in getattr(layer.activation, '__name__', 'softmax')
  if isinstance(layer, keras.layers.Rescaling):
    return np.ndim(layer.scale) == 0 and np.ndim(layer.offset) == 0
  return False


@dataclasses.dataclass(frozen=True)
class _Stage:
  """One spatial op, run VALID on a pre-padded crop, and the pointwise layers after it."""
  op: Callable[[tf.Tensor], tf.Tensor]
  full: Callable[[tf.Tensor], tf.Tensor]  # the layer on whole images, as the model runs it
  kernel: tuple[int, int]
  strides: tuple[int, int]
  pad_before: tuple[int, int]
  in_size: tuple[int, int]
  out_size: tuple[int, int]
  pad_value: float
  pointwise: tuple[keras.layers.Layer, ...] = ()


def _apply(layers: Sequence[Callable], h: tf.Tensor) -> tf.Tensor:
  for layer in layers:
    h = layer(h, training=False) if isinstance(layer, keras.layers.Layer) else layer(h)
  return h


# ---------------------------------------------------------------------------------------------
# Index tables: for one image axis, every quantity a query needs, per (window side, start).

# Per segment: the crop of the segment input that is read, where the changed input lies in it,
# the valid part of each intermediate output, and the changed output region.
_CROP_FIELDS = ('v0', 'vlen', 'pbegin', 'plen', 'ibefore', 'iafter', 'obefore', 'oafter')
_OUT_FIELDS = ('out0', 'outlen')


def _reach(a: int, b: int, stage: _Stage, axis: int) -> tuple[int, int]:
  """Outputs [o0, o1) whose window meets inputs [a, b) (at least one: an unread 'valid' edge)."""
  k, s, p, n = stage.kernel[axis], stage.strides[axis], stage.pad_before[axis], \
      stage.out_size[axis]
  o0 = max((a + p - k) // s + 1, 0)  # the first o with o * s - p + k > a
  o1 = min((b - 1 + p) // s + 1, n)
  o0 = min(o0, n - 1)
  return o0, max(o1, o0 + 1)


def _reads(o0: int, o1: int, stage: _Stage, axis: int) -> tuple[int, int]:
  """The inputs [q0, q1) that outputs [o0, o1) read (beyond the image where padded)."""
  k, s, p = stage.kernel[axis], stage.strides[axis], stage.pad_before[axis]
  return o0 * s - p, (o1 - 1) * s - p + k


def _axis_entry(segments: Sequence[Sequence[_Stage]], axis: int, a: int, b: int) -> list[int]:
  """The table row of one axis for a window over [a, b) of the images."""
  row = []
  for segment in segments:
    o0, o1 = a, b
    for stage in segment:
      o0, o1 = _reach(o0, o1, stage, axis)
    need = [(o0, o1)]  # outputs each stage must produce, last stage first
    for stage in reversed(segment[1:]):
      need.append(_reads(*need[-1], stage, axis))
    need.reverse()
    q0, q1 = _reads(*need[0], segment[0], axis)
    size = segment[0].in_size[axis]
    v0, v1 = max(q0, 0), min(q1, size)
    # The changed inputs inside the crop (none where the window sits in inputs the stage
    # skips, e.g. between the taps of a stride larger than the kernel).
    i0 = min(max(a, v0), v1)
    i1 = max(min(b, v1), i0)
    pbegin = min(max(i0 - a, 0), b - a)
    row += [v0, v1 - v0, pbegin, i1 - i0, i0 - v0, v1 - i1, v0 - q0, q1 - v1]
    for stage, (r0, r1) in zip(segment[:-1], need[:-1]):  # valid part of intermediate outputs
      row += [max(-r0, 0), min(r1, stage.out_size[axis]) - r0]
    row += [o0, o1 - o0]
    a, b = o0, o1
  return row


def _axis_table(segments, axis: int, size: int) -> np.ndarray:
  """[size + 1, size, L] int32: the row for side s and start a at [s, a] (unused rows 0)."""
  rows = {(s, a): _axis_entry(segments, axis, a, a + s)
          for s in range(1, size + 1) for a in range(size - s + 1)}
  width = len(next(iter(rows.values())))
  table = np.zeros((size + 1, size, width), np.int32)
  for (s, a), row in rows.items():
    table[s, a] = row
  return table


def _offsets(segments) -> list[dict[str, int | list[tuple[int, int]]]]:
  """Per segment, where each field sits in an axis row."""
  out, k = [], 0
  for segment in segments:
    fields = {name: k + j for j, name in enumerate(_CROP_FIELDS)}
    k += len(_CROP_FIELDS)
    fields['valid'] = [(k + 2 * j, k + 2 * j + 1) for j in range(len(segment) - 1)]
    k += 2 * (len(segment) - 1)
    fields.update({name: k + j for j, name in enumerate(_OUT_FIELDS)})
    k += len(_OUT_FIELDS)
    out.append(fields)
  return out


# ---------------------------------------------------------------------------------------------
# Tensor helpers.

def _write(cache, rows, corner, values):
  """cache with `values` [m, h, w, C] written at `corner` (r, c) of the cache rows `rows` [m]."""
  shape = tf.shape(values)
  grid = tf.meshgrid(tf.cast(rows, tf.int32), corner[0] + tf.range(shape[1]),
                     corner[1] + tf.range(shape[2]), indexing='ij')
  return tf.tensor_scatter_nd_update(cache, tf.stack(grid, axis=-1), values)


def patched(cache, active, corner, new):
  """cache[active] with `new` [n, h, w, C] written at `corner`, the whole images."""
  height, width = cache.shape[1], cache.shape[2]
  shape = tf.shape(new)
  pads = [[0, 0], [corner[0], height - corner[0] - shape[1]],
          [corner[1], width - corner[1] - shape[2]], [0, 0]]
  mask = tf.pad(tf.ones(tf.stack([1, shape[1], shape[2], 1]), tf.bool), pads)
  return tf.where(mask, tf.pad(new, pads), tf.gather(cache, active))


class WindowedModel:
  """A model's forward pass for images that differ from cached ones inside one window.

  State: a tuple of tensors indexed by example whose first entry is the cached images
  [B, H, W, C]; the others are the segments' outputs and the head's value for those images.
  """

  def __init__(self, model_fn, segments: Sequence[Sequence[_Stage]] = (), head: str = 'plain',
               head_layer=None, tail: Sequence[Callable] = (), reason: str = '', tables=None):
    self._model_fn = model_fn
    self._segments = tuple(tuple(segment) for segment in segments)
    self._head = head  # 'plain' | 'dense' | 'gap' | 'patched'
    self._head_layer = head_layer
    self._tail = tuple(tail)
    self.reason = reason
    if self._segments:
      first = self._segments[0][0]
      # NumPy: a constant of whichever graph queries.
      self._tables = tables or tuple(_axis_table(self._segments, axis, first.in_size[axis])
                                     for axis in (0, 1))
      self._width = self._tables[0].shape[-1]
      self._fields = _offsets(self._segments)

  @property
  def incremental(self) -> bool:
    """True if queries recompute only what the window reaches."""
    return self._head != 'plain'

  @property
  def accumulates(self) -> bool:
    """True if the head's cache is updated by differences (float rounding accumulates)."""
    return self._head in ('dense', 'gap')

  def describe(self) -> str:
    if not self.incremental:
      return f'plain ({self.reason})'
    return (f'windowed: {len(self._segments)} segments of '
            f'{[len(segment) for segment in self._segments]} spatial layers, head {self._head}')

  @tf.autograph.experimental.do_not_convert
  def full(self, images: tf.Tensor) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
    """(logits [B, K], state) of `images`, computed from scratch."""
    if not self.incremental:
      return self._model_fn(images), (images,)
    state = [images]
    h = images
    for segment in self._segments:
      for stage in segment:
        h = _apply(stage.pointwise, stage.full(h))
      state.append(h)
    if self._head == 'patched':
      return _apply(self._tail, h), tuple(state)
    value = self._head_value(h)
    state.append(value)
    return self._head_out(value), tuple(state)

  @tf.autograph.experimental.do_not_convert
  def query(self, state, active, corner, new_window):
    """Logits of the cached images `active` with their window replaced, and the update.

    Args:
      state: from `full` or `commit`.
      active: int rows of the state queried [n].
      corner: (h0, w0) int32 scalars, the window's top-left pixel.
      new_window: [n, s, s, C] the new pixel values inside the window (s static or not).

    Returns:
      (logits [n, K], update): what `commit` writes where a proposal is accepted.
    """
    h0, w0 = corner
    if not self.incremental:
      return (self._model_fn(patched(state[0], active, corner, new_window)),
              ((corner, new_window),))
    side = tf.shape(new_window)[1]
    rows, cols = (tf.gather(tf.constant(table.reshape(-1, self._width)),
                            side * table.shape[1] + start)
                  for table, start in zip(self._tables, (h0, w0)))
    ints = tf.concat([rows, cols, [0, -1, 1]], 0)
    zero, minus, one = 2 * self._width, 2 * self._width + 1, 2 * self._width + 2
    at = lambda *index: tf.gather(ints, list(index))
    col = lambda field: self._width + field

    update = [(corner, new_window)]
    new = new_window
    for k, (segment, f) in enumerate(zip(self._segments, self._fields)):
      base = tf.slice(state[k], at(zero, f['v0'], col(f['v0']), zero),
                      at(minus, f['vlen'], col(f['vlen']), minus))
      patch = tf.slice(new, at(zero, f['pbegin'], col(f['pbegin']), zero),
                       at(minus, f['plen'], col(f['plen']), minus))
      inner = tf.reshape(at(zero, zero, f['ibefore'], f['iafter'], col(f['ibefore']),
                            col(f['iafter']), zero, zero), [4, 2])
      mask = tf.pad(tf.ones(at(one, f['plen'], col(f['plen']), one), tf.bool), inner)
      h = tf.where(mask, tf.pad(patch, inner), tf.gather(base, active))
      h = tf.pad(h, tf.reshape(at(zero, zero, f['obefore'], f['oafter'], col(f['obefore']),
                                  col(f['oafter']), zero, zero), [4, 2]),
                 constant_values=segment[0].pad_value)
      for j, stage in enumerate(segment):
        h = _apply(stage.pointwise, stage.op(h))
        if j + 1 < len(segment):  # outputs beyond the layer's edge are the next op's padding
          lo, hi = f['valid'][j]
          bounds = at(lo, hi, col(lo), col(hi))
          in_rows = tf.logical_and(tf.range(tf.shape(h)[1]) >= bounds[0],
                                   tf.range(tf.shape(h)[1]) < bounds[1])
          in_cols = tf.logical_and(tf.range(tf.shape(h)[2]) >= bounds[2],
                                   tf.range(tf.shape(h)[2]) < bounds[3])
          valid = tf.logical_and(in_rows[None, :, None, None], in_cols[None, None, :, None])
          h = tf.where(valid, h, tf.cast(segment[j + 1].pad_value, h.dtype))
      new = h
      update.append((at(f['out0'], col(f['out0'])), new))
    last = len(self._segments)
    region = at(self._fields[-1]['out0'], self._fields[-1]['outlen'],
                col(self._fields[-1]['out0']), col(self._fields[-1]['outlen']))
    if self._head == 'patched':
      return (_apply(self._tail, patched(state[last], active, (region[0], region[2]), new)),
              tuple(update))
    old = tf.gather(tf.slice(state[last], tf.stack([0, region[0], region[2], 0]),
                             tf.stack([-1, region[1], region[3], -1])), active)
    value = tf.gather(state[last + 1], active) + self._head_change(new - old, region,
                                                                     state[last].shape)
    update.append((None, value))
    return self._head_out(value), tuple(update)

  @tf.autograph.experimental.do_not_convert
  def commit(self, state, rows, accepted, update):
    """The state with the accepted proposals written in.

    Args:
      state: the state queried.
      rows: int rows of the state that were queried [n] (`active`).
      accepted: bool [n], the proposals kept.
      update: from `query`.
    """
    local = tf.where(accepted)[:, 0]
    rows = tf.gather(rows, local)
    written = []
    for cache, (corner, values) in zip(state, update):
      values = tf.gather(values, local)
      if corner is None:
        written.append(tf.tensor_scatter_nd_update(cache, rows[:, None], values))
      else:
        written.append(_write(cache, rows, (corner[0], corner[1]), values))
    return tuple(written) + tuple(state[len(update):])

  # The linear heads: value = head(spatial output), logits = tail(activation(value)).
  def _head_value(self, h):
    if self._head == 'dense':
      flat = tf.reshape(h, [tf.shape(h)[0], -1])
      value = tf.matmul(flat, tf.convert_to_tensor(self._head_layer.kernel))
      if self._head_layer.use_bias:
        value = value + tf.convert_to_tensor(self._head_layer.bias)
      return value
    return tf.reduce_mean(h, axis=[1, 2])  # gap

  def _head_change(self, change, region, shape):
    """head(f + change over region) - head(f), change [n, rows, cols, C]; region [r, rows, c, cols]."""
    if self._head == 'gap':
      return tf.reduce_sum(change, axis=[1, 2]) / float(shape[1] * shape[2])
    width, channels = shape[2], shape[3]
    pixels = ((region[0] + tf.range(region[1]))[:, None] * width
              + (region[2] + tf.range(region[3]))[None, :])
    features = tf.reshape(pixels[:, :, None] * channels + tf.range(channels)[None, None, :],
                          [-1])
    kernel = tf.gather(tf.convert_to_tensor(self._head_layer.kernel), features)
    return tf.matmul(tf.reshape(change, [tf.shape(change)[0], -1]), kernel)

  def _head_out(self, value):
    if self._head == 'dense':
      value = self._head_layer.activation(value)
    return _apply(self._tail, value)


# ---------------------------------------------------------------------------------------------
# Reading a Keras model.

def _chain(model) -> list | None:
  """The model's layers in order if each feeds only the next (else None)."""
  if not isinstance(model, keras.Model):
    return None
  layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
  if isinstance(model, keras.Sequential):
    return layers
  try:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
      return None
    previous = model.inputs[0]
    for layer in layers:
      if len(layer._inbound_nodes) != 1 or layer.input is not previous:  # pylint: disable=protected-access
        return None
      previous = layer.output
    return layers if previous is model.outputs[0] else None
  except (AttributeError, ValueError):
    return None


def _pair(value) -> tuple[int, int]:
  return (int(value), int(value)) if np.ndim(value) == 0 else (int(value[0]), int(value[1]))


def _geometry(size, kernel, stride, padding) -> tuple[int, int]:
  """(padding before, output size) of one axis, as TensorFlow pads."""
  if padding == 'valid':
    return 0, (size - kernel) // stride + 1
  out = -(-size // stride)
  return max((out - 1) * stride + kernel - size, 0) // 2, out


def _is_pointwise(layer) -> bool:
  if isinstance(layer, _POINTWISE):
    return True
  if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization)):
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return [a % 4 for a in axis] == [3]
  return False


def _spatial_stage(layer, size) -> _Stage | str:
  """A _Stage for a conv or pooling layer on inputs of `size` (H, W), or why it is not one."""
  if getattr(layer, 'data_format', 'channels_last') != 'channels_last':
    return f'{layer.name}: channels_first'
  if type(layer) is keras.layers.Conv2D:
    if _pair(layer.dilation_rate) != (1, 1) or getattr(layer, 'groups', 1) != 1:
      return f'{layer.name}: dilated or grouped convolution'
    kernel, strides = _pair(layer.kernel_size), _pair(layer.strides)

    def op(crop, layer=layer, strides=strides):
      out = tf.nn.conv2d(crop, tf.convert_to_tensor(layer.kernel), strides, 'VALID')
      if layer.use_bias:
        out = tf.nn.bias_add(out, tf.convert_to_tensor(layer.bias))
      return layer.activation(out)
    pad_value = 0.0
  elif type(layer) in (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D):
    kernel, strides = _pair(layer.pool_size), _pair(layer.strides)
    is_max = type(layer) is keras.layers.MaxPooling2D
    if not is_max and layer.padding == 'same':
      return f'{layer.name}: average pooling with same padding'
    pool = tf.nn.max_pool2d if is_max else tf.nn.avg_pool2d
    op = lambda crop, pool=pool, kernel=kernel, strides=strides: pool(crop, kernel, strides,
                                                                      'VALID')
    pad_value = -np.inf if is_max else 0.0
  else:
    return f'{layer.name}: {type(layer).__name__} is not a supported spatial layer'
  padding = layer.padding.lower()
  if padding not in ('same', 'valid'):
    return f'{layer.name}: padding {padding!r}'
  rows = _geometry(size[0], kernel[0], strides[0], padding)
  cols = _geometry(size[1], kernel[1], strides[1], padding)
  if min(rows[1], cols[1]) < 1:
    return f'{layer.name}: empty output'
  return _Stage(op=op, full=lambda h, layer=layer: layer(h, training=False), kernel=kernel,
                strides=strides, pad_before=(rows[0], cols[0]), in_size=tuple(size),
                out_size=(rows[1], cols[1]), pad_value=pad_value)


def _identity_stage(size) -> _Stage:
  return _Stage(op=tf.identity, full=tf.identity, kernel=(1, 1), strides=(1, 1),
                pad_before=(0, 0), in_size=tuple(size), out_size=tuple(size), pad_value=0.0)


def _build(model, model_fn, image_shape) -> WindowedModel:
  plain = lambda reason: WindowedModel(model_fn, reason=reason)
  layers = _chain(model)
  if layers is None:
    return plain('not a Keras model whose layers form a chain')
  if any(getattr(layer, 'compute_dtype', 'float32') != 'float32' for layer in layers):
    return plain('a layer does not compute in float32')
  size = tuple(int(v) for v in image_shape[:2])
  stages: list[_Stage] = []
  k = 0
  while k < len(layers):
    layer = layers[k]
    if _is_pointwise(layer):
      if not stages:
        stages.append(_identity_stage(size))
      stages[-1] = dataclasses.replace(stages[-1], pointwise=stages[-1].pointwise + (layer,))
    else:
      stage = _spatial_stage(layer, size)
      if isinstance(stage, str):
        if not stages:
          return plain(stage)
        break
      stages.append(stage)
      size = stage.out_size
    k += 1
  segments, current = [], []
  for stage in stages:  # a segment ends at each downsampling layer and at the end
    current.append(stage)
    if max(stage.strides) > 1:
      segments.append(current)
      current = []
  if current:
    segments.append(current)
  rest = layers[k:]
  if rest and type(rest[0]) is keras.layers.Flatten:
    # Parameter-free elementwise layers commute with Flatten (e.g. the Dropout of Keras' MNIST
    # example between Flatten and Dense): they join the last spatial layer.
    j = 1
    while j < len(rest) and _is_elementwise(rest[j]):
      j += 1
    if j < len(rest) and type(rest[j]) is keras.layers.Dense:
      last = segments[-1][-1]
      segments[-1][-1] = dataclasses.replace(last, pointwise=last.pointwise + tuple(rest[1:j]))
      return WindowedModel(model_fn, segments, 'dense', rest[j], rest[j + 1:])
  if (rest and type(rest[0]) is keras.layers.GlobalAveragePooling2D
      and not getattr(rest[0], 'keepdims', False)):
    return WindowedModel(model_fn, segments, 'gap', None, rest[1:])
  return WindowedModel(model_fn, segments, 'patched', None, rest)


@tf.autograph.experimental.do_not_convert
def probe_error(windowed: WindowedModel, model_fn, image_shape: Sequence[int]) -> float:
  """The largest difference of windowed and direct logits on probe windows, relative to
  1 + the largest logit: queries at corners, edges and the middle, with sides 1 to H - 1,
  each followed by a commit of some of the proposals."""
  rng = np.random.default_rng(0)
  height, width, channels = (int(v) for v in image_shape)
  images = tf.constant(rng.uniform(size=(4, height, width, channels)), tf.float32)
  direct = model_fn(images)
  logits, state = windowed.full(images)
  worst = float(tf.reduce_max(tf.abs(logits - direct)))
  scale = 1.0 + float(tf.reduce_max(tf.abs(direct)))
  active = tf.constant([3, 0, 2], tf.int64)
  side_max = max(min(height, width) - 1, 1)
  for side, (h0, w0) in ((1, (0, 0)), (3, (height // 2 - 1, width // 3)),
                         (2, (height - 2, width - 2)), (side_max, (1, 0)),
                         (min(5, side_max), (0, width - 5)), (1, (height - 1, 1))):
    h0, w0 = max(min(h0, height - side), 0), max(min(w0, width - side), 0)
    new = tf.constant(rng.uniform(size=(3, side, side, channels)), tf.float32)
    corner = (tf.constant(h0), tf.constant(w0))
    logits, update = windowed.query(state, active, corner, new)
    expected = model_fn(patched(state[0], active, corner, new))
    worst = max(worst, float(tf.reduce_max(tf.abs(logits - expected))))
    state = windowed.commit(state, active, tf.constant([True, True, False]), update)
    logits, _ = windowed.full(state[0])
    worst = max(worst, float(tf.reduce_max(tf.abs(logits - model_fn(state[0])))))
  return worst / scale


# model -> (image shape, its plan before the probe): tables are built once per model and shape.
_PLANS: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


@tf.autograph.experimental.do_not_convert
def plan(model_fn, model: keras.Model | None, image_shape: Sequence[int]) -> WindowedModel:
  """The windowed forward pass of `model` (the plain one through `model_fn` where unsupported).

  Args:
    model_fn: images -> logits, the model in inference mode (`lambda x: model(x,
      training=False)`); the plain plan and Square's re-checks call it, and the probe compares
      windowed logits with it, so a model_fn that is not the model (a wrapper adding
      preprocessing or a defense) gets the plain plan.
    model: the Keras model that model_fn runs, or None.
    image_shape: static (H, W, C) of the images.

  Returns:
    A `WindowedModel`; `.incremental` says whether queries are windowed, `.reason` why not.
  """
  if model is None:
    return WindowedModel(model_fn, reason='no Keras model given')
  key = tuple(int(v) for v in image_shape)
  cached = _PLANS.get(model)
  if cached is None or cached[0] != key:
    cached = (key, _build(model, model_fn, key))
    _PLANS[model] = cached
  built = cached[1]
  windowed = WindowedModel(model_fn, built._segments, built._head, built._head_layer,  # pylint: disable=protected-access
                           built._tail, built.reason, tables=getattr(built, '_tables', None))  # pylint: disable=protected-access
  if not windowed.incremental:
    return windowed
  try:
    with tf.init_scope():  # the probe runs eagerly, also while a tf.function traces
      error = probe_error(windowed, model_fn, key)
    reason = (None if error <= _TOLERANCE else
              f'windowed logits differ from model_fn\'s by {error:.2g} (relative) on probe images')
  except (tf.errors.OpError, ValueError, TypeError) as e:  # e.g. a model_fn that needs a graph
    reason = f'the probe failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}'
  if reason is None:
    return windowed
  logging.warning('Square on %s: %s; every query runs the whole model.', model.name, reason)
  return WindowedModel(model_fn, reason=reason)
