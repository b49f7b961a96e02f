"""BatchNorm statistics of a trained classifier: the gap between moving and batch statistics.

    gap = batchnorm.statistics_gap(model, images)          # per layer: how far the moving stats lie
    batchnorm.recalibrate(model, images)                   # moving stats := the images' statistics

A BatchNorm network computes two functions: training mode normalises with each batch's
statistics, inference mode (every evaluation, the export) with the moving averages. Training keeps
them close for the loss it optimises. AAD's attention passes run in inference mode by default
(`DefenseConfig.attention_mode`), so on a BatchNorm backbone a strong attention term can act on a
function the classification loss never sees (docs/results/cifar10_study.md). `recalibrate` is the
standard remedy for a stale gap (the moving statistics replaced by the exact averages over a set of
images); `statistics_gap` measures it.
"""

import contextlib
import dataclasses
from typing import List, Sequence

import keras
import numpy as np
import tensorflow as tf


def batchnorm_layers(model: keras.Model) -> List[keras.layers.BatchNormalization]:
  """Every BatchNormalization layer of `model`, nested models included, in call order."""
  return [layer for layer in model._flatten_layers(include_self=False)
          if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def moving_statistics_kept(layers: List[keras.layers.BatchNormalization]):
  """Restores the layers' moving statistics on exit (training-mode calls update them)."""
  saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
  try:
    yield
  finally:
    for layer, (mean, variance) in zip(layers, saved):
      layer.moving_mean.assign(mean)
      layer.moving_variance.assign(variance)


@contextlib.contextmanager
def attribute_set(layers: Sequence[keras.layers.Layer], name: str, value):
  """Sets attribute `name` of every layer to `value` inside, restoring each one's on exit."""
  saved = [getattr(layer, name) for layer in layers]
  for layer in layers:
    setattr(layer, name, value)
  try:
    yield
  finally:
    for layer, old in zip(layers, saved):
      setattr(layer, name, old)


def frozen_statistics(model: keras.Model):
  """Training-mode calls traced inside leave the moving statistics as they are.

  Sets every BatchNorm layer's momentum to 1 (moving = 1 * moving + 0 * batch: the update is
  exact) for the calls made, or traced, inside; the layers still normalise with batch statistics.
  Momentum is read when a call is traced, so a tf.function traced inside keeps the frozen update.
  """
  return attribute_set(batchnorm_layers(model), 'momentum', 1.0)


def batch_statistics(model: keras.Model, images: np.ndarray,
                     batch_size: int = 100) -> List[tuple]:
  """Per BatchNorm layer, the (mean, variance) of its inputs over `images` in training mode.

  The statistics of each batch are those training mode normalises with (the earlier layers
  normalise with their batch statistics too); they are averaged over the batches, so with one
  batch they are exactly what training mode uses. The moving statistics are left unchanged.
  """
  layers = batchnorm_layers(model)
  if not layers:
    raise ValueError(f'{model.name} has no BatchNormalization layer.')
  if len(images) < batch_size:
    raise ValueError(f'Need at least one batch of {batch_size} images, got {len(images)}.')
  inputs = keras.Model(model.inputs, [layer.input for layer in layers])

  @tf.function
  def moments(x):
    outputs = tf.nest.flatten(inputs(x, training=True))  # one layer: a tensor, not a list
    return [tf.nn.moments(h, axes=list(range(len(h.shape) - 1))) for h in outputs]

  num_batches = len(images) // batch_size
  sums = None
  with moving_statistics_kept(layers):
    for i in range(num_batches):
      values = [(m.numpy(), v.numpy()) for m, v in
                moments(tf.constant(images[i * batch_size:(i + 1) * batch_size]))]
      sums = values if sums is None else [(a + m, b + v) for (a, b), (m, v) in zip(sums, values)]
  return [(m / num_batches, v / num_batches) for m, v in sums]


def recalibrate(model: keras.Model, images: np.ndarray, batch_size: int = 100) -> None:
  """Sets every BatchNorm layer's moving statistics to `batch_statistics(model, images)`."""
  for layer, (mean, variance) in zip(batchnorm_layers(model),
                                     batch_statistics(model, images, batch_size)):
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(variance)


@dataclasses.dataclass(frozen=True)
class LayerGap:
  """How far one layer's moving statistics lie from the images' batch statistics.

  Attributes:
    name: the layer's name.
    max_mean_shift: max over channels of |moving mean - mean| / batch standard deviation.
    variance_ratio: (min, median, max) over channels of moving variance / variance.
  """
  name: str
  max_mean_shift: float
  variance_ratio: tuple

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def statistics_gap(model: keras.Model, images: np.ndarray,
                   batch_size: int = 100) -> List[LayerGap]:
  """Per BatchNorm layer, the gap between its moving statistics and those of `images`."""
  gaps = []
  for layer, (mean, variance) in zip(batchnorm_layers(model),
                                     batch_statistics(model, images, batch_size)):
    moving_mean, moving_variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    shift = np.abs(moving_mean - mean) / np.sqrt(variance + layer.epsilon)
    ratio = moving_variance / (variance + layer.epsilon)
    gaps.append(LayerGap(layer.name, float(np.max(shift)),
                         tuple(float(q) for q in np.quantile(ratio, [0.0, 0.5, 1.0]))))
  return gaps


def accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray, *, training: bool,
             batch_size: int = 100) -> float:
  """Top-1 accuracy of `model` in inference mode or on batch statistics (`training`).

  Training mode updates the moving statistics as a side effect; they are restored.
  """
  predict = tf.function(lambda x: tf.argmax(model(x, training=training), axis=-1))
  labels = np.asarray(labels).reshape(-1)
  correct = 0
  with moving_statistics_kept(batchnorm_layers(model)):
    for i in range(0, len(images), batch_size):
      correct += int(np.sum(predict(tf.constant(images[i:i + batch_size])).numpy() ==
                            labels[i:i + batch_size]))
  return correct / len(images)
