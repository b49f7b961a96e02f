"""Planning forward passes of images that differ from cached ones only inside one window (Square).

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
convolution grows it by k - 1 pixels, a 2 x 2 pooling halves it). Every crop, region and
padding depends only on the window's corner and side, so this module tabulates them per image
axis when the plan is made (a query reads them with one gather per axis) and hands the result,
a `Layout`, to `windowed_model.WindowedModel`, which runs queries and commits. On the MNIST
LeNet with a 1-3 pixel window a query costs 40-60 % of a forward pass in the middle of the
image, less near its edges (`benchmarks/windowed_square.py`,
`docs/results/windowed_square_cpu.json`).

The head's cache accumulates float rounding over accepted updates: Square recomputes the state
exactly with `full` every `REFRESH_EVERY` queries and re-checks with the model itself every
example that a windowed query calls misclassified. Recomputed regions equal the model's own
activations to float rounding.

Anything else (no Keras model given, a graph that is not a chain, a first layer that is not one
of the above, a non-float32 dtype policy) gets the plain plan: the patched images through
`model_fn`, one whole forward pass per query. `plan` also checks numerically, each time it is
called, that windowed logits equal model_fn's on probe images and windows (corners, edges and
the middle, sides 1 to H - 1) to float32 rounding (`_TOLERANCE`, 1e-5 relative; the windowed
pass differs from the model by about 1e-7), and falls back to the plain plan with a logged
reason if they do not or if the probe fails. That is what keeps the windowed queries honest:
they run `model`, so a `model_fn` that is anything else (a wrapper that quantises or otherwise
preprocesses the input, a defense, the model in training mode with Dropout or batch
statistics) must get the plain plan, or Square would attack `model` and only re-check its
suspected successes on model_fn, a transfer attack that overstates robustness.
"""

import dataclasses
import weakref
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf.attacks.windowed_model import Layout
from aad_tf.attacks.windowed_model import Stage
from aad_tf.attacks.windowed_model import WindowedModel
from aad_tf.attacks.windowed_model import patched

REFRESH_EVERY = 500  # Square recomputes the state exactly every this many queries
# Probe check: |windowed - model_fn| <= tol * (1 + max |model_fn logits|). Float32 rounding:
# the windowed pass differs from the model by about 1e-7 relative; a wrapper that quantises the
# input to 1/255 moves the logits of an untrained LeNet by about 5e-4.
_TOLERANCE = 1e-5

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


# ---------------------------------------------------------------------------------------------
# Index tables: for one image axis, every quantity a query needs, per (window side, start).

# Per segment: the crop of the segment input that is read, where the changed input lies in it,
# the valid part of each intermediate output, and the changed output region.
_CROP_FIELDS = ('v0', 'vlen', 'pbegin', 'plen', 'ibefore', 'iafter', 'obefore', 'oafter')
_OUT_FIELDS = ('out0', 'outlen')


def _reach(a: int, b: int, stage: Stage, axis: int) -> tuple[int, int]:
  """Outputs [o0, o1) whose window meets inputs [a, b) (at least one: an unread 'valid' edge)."""
  k, s, p, n = stage.kernel[axis], stage.strides[axis], stage.pad_before[axis], \
      stage.out_size[axis]
  o0 = max((a + p - k) // s + 1, 0)  # the first o with o * s - p + k > a
  o1 = min((b - 1 + p) // s + 1, n)
  o0 = min(o0, n - 1)
  return o0, max(o1, o0 + 1)


def _reads(o0: int, o1: int, stage: Stage, axis: int) -> tuple[int, int]:
  """The inputs [q0, q1) that outputs [o0, o1) read (beyond the image where padded)."""
  k, s, p = stage.kernel[axis], stage.strides[axis], stage.pad_before[axis]
  return o0 * s - p, (o1 - 1) * s - p + k


def _axis_entry(segments: Sequence[Sequence[Stage]], axis: int, a: int, b: int) -> list[int]:
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


def _spatial_stage(layer, size) -> Stage | str:
  """A Stage for a conv or pooling layer on inputs of `size` (H, W), or why it is not one."""
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
  return Stage(op=op, full=lambda h, layer=layer: layer(h, training=False), kernel=kernel,
                strides=strides, pad_before=(rows[0], cols[0]), in_size=tuple(size),
                out_size=(rows[1], cols[1]), pad_value=pad_value)


def _identity_stage(size) -> Stage:
  return Stage(op=tf.identity, full=tf.identity, kernel=(1, 1), strides=(1, 1),
                pad_before=(0, 0), in_size=tuple(size), out_size=tuple(size), pad_value=0.0)


def _layout(segments, head, head_layer=None, tail=()) -> Layout:
  segments = tuple(tuple(segment) for segment in segments)
  first = segments[0][0]
  tables = tuple(_axis_table(segments, axis, first.in_size[axis]) for axis in (0, 1))
  return Layout(segments, head, head_layer, tuple(tail), tables, tuple(_offsets(segments)))


def _build(model, image_shape) -> Layout | str:
  """The layout of `model`'s windowed pass, or why it has none."""
  plain = lambda reason: reason
  layers = _chain(model)
  if layers is None:
    return plain('not a Keras model whose layers form a chain')
  if any(getattr(layer, 'compute_dtype', 'float32') != 'float32' for layer in layers):
    return plain('a layer does not compute in float32')
  size = tuple(int(v) for v in image_shape[:2])
  stages: list[Stage] = []
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
      return _layout(segments, 'dense', rest[j], rest[j + 1:])
  if (rest and type(rest[0]) is keras.layers.GlobalAveragePooling2D
      and not getattr(rest[0], 'keepdims', False)):
    return _layout(segments, 'gap', None, rest[1:])
  return _layout(segments, 'patched', None, rest)


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


# model -> (image shape, its layout or why it has none): tables are built once per model and
# shape.
_PLANS: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


@tf.autograph.experimental.do_not_convert
def plan(model_fn, model: keras.Model | None, image_shape: Sequence[int]) -> WindowedModel:
  """The windowed forward pass of `model` (the plain one through `model_fn` where unsupported).

  Args:
    model_fn: images -> logits; the windowed plan is built only when it is the model's own
      inference call (`lambda x: model(x, training=False)`): the probe compares windowed
      logits with model_fn's to float32 rounding, so a model_fn that is not exactly the model
      in inference mode (a wrapper adding preprocessing or a defense, training-mode Dropout or
      BatchNormalization) gets the plain plan, which calls model_fn for every query.
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
    cached = (key, _build(model, key))
    _PLANS[model] = cached
  layout = cached[1]
  if isinstance(layout, str):
    return WindowedModel(model_fn, reason=layout)
  windowed = WindowedModel(model_fn, layout)
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
