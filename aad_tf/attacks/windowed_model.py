"""Executing a windowed plan: forward passes of images that differ from cached ones in one window.

`aad_tf.attacks.windowed` reads a Keras chain model into a `Layout` (its spatial segments, the
linear head, the tail, and per image axis the index tables of every crop and region a window
needs); a `WindowedModel` runs it. `full` computes the logits of whole images and the state:
the images, each segment's output and the head's value. `query` recomputes, for the images of
the state with one window replaced, only the region of each segment that the window reaches
(from a crop of the cached segment input with the changed region written in) and updates the
head by the change, Dense(f + d) = Dense(f) + d W[the rows the region feeds]
(GlobalAveragePooling2D likewise); `commit` writes the regions of the accepted proposals into
the caches. Without a layout every query is one call of `model_fn` on the patched images.
Python control flow here runs on static structure only, so AutoGraph is told to leave it.
"""

import dataclasses
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Stage:
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


@dataclasses.dataclass(frozen=True)
class Layout:
  """What `windowed.plan` reads from a Keras chain model, for a `WindowedModel` to run.

  Attributes:
    segments: the spatial stages, cut after each downsampling one (each output is cached).
    head: 'dense' (Flatten + Dense), 'gap' (GlobalAveragePooling2D) or 'patched' (anything
      else: the whole last segment output is patched and the tail run on it).
    head_layer: the Dense layer of a 'dense' head, else None.
    tail: the layers after the head, run as they are.
    tables: per image axis (rows, columns), int32 [size + 1, size, L]: at [s, a] the crops,
      paddings and regions of a window of side s starting at a (see `windowed._axis_entry`).
    fields: per segment, where each quantity sits in a table row (`windowed._offsets`).
  """
  segments: tuple[tuple[Stage, ...], ...]
  head: str
  head_layer: keras.layers.Layer | None
  tail: tuple[Callable, ...]
  tables: tuple[np.ndarray, np.ndarray]
  fields: tuple[dict, ...]


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

  def __init__(self, model_fn, layout: Layout | None = None, reason: str = ''):
    """`layout` None: the plain plan, every query one call of model_fn (`reason` says why)."""
    self._model_fn = model_fn
    self.layout = layout
    self.reason = reason
    if layout is None:
      self._segments, self._head, self._head_layer, self._tail = (), 'plain', None, ()
      return
    self._segments, self._head = layout.segments, layout.head
    self._head_layer, self._tail = layout.head_layer, layout.tail
    self._tables = layout.tables  # NumPy: a constant of whichever graph queries
    self._width = self._tables[0].shape[-1]
    self._fields = layout.fields

  @property
  def head(self) -> str:
    """'plain' (no layout), 'dense', 'gap' or 'patched'."""
    return self._head

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
