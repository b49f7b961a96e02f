"""The one entry point to a run's data: in memory or streamed, decided by the registry entry.

    source = training_data(config)      # config: a training.TrainConfig
    source.num_train                    # examples of the training split
    source.distributed(strategy, start_step=0, num_steps=100)   # batches for fit
    source.eval_dataset(batch_size=500, num_examples=1000)      # the closing evaluation
    source.arrays                       # the Arrays of in-memory datasets, else None

`training.train` and `trainers/main.py` both get their data here.
"""

from typing import Protocol

import tensorflow as tf

from aad_tf import distribute
from aad_tf.data import arrays as arrays_lib
from aad_tf.data import imagenet
from aad_tf.data import pipelines
from aad_tf.data import registry


class DataSettings(Protocol):
  """The data fields of `training.TrainConfig` that this module reads."""
  dataset: str
  data_dir: str | None
  data_source: str
  download: bool
  manual_dir: str | None
  batch_size: int
  seed: int
  augment: str | None
  image_shape: tuple[int, int, int]


class TrainingData:
  """Where a run's batches come from: in-memory Arrays, or a stream (a TFDS builder).

  Args:
    config: the run (`DataSettings`).
    arrays: the dataset if already loaded (in-memory datasets only); else the registry entry's
      loader reads it from config.data_dir, or, for streamed datasets, opens (and if needed
      prepares, offline) the TFDS directory.
  """

  def __init__(self, config: DataSettings, arrays: arrays_lib.Arrays | None = None):
    self.config = config
    self.info = registry.get_info(config.dataset)
    self.arrays = None
    self.builder = None
    if self.info.streamed:
      if arrays is not None:
        raise ValueError(f'{config.dataset} is streamed; pass no arrays.')
      self.builder = self.info.loader(self.info, data_dir=config.data_dir,
                                      manual_dir=config.manual_dir)
      self.num_train = int(self.builder.info.splits['train'].num_examples)
      self.eval_split = 'validation'
      self.num_eval = int(self.builder.info.splits['validation'].num_examples)
    else:
      self.arrays = arrays if arrays is not None else arrays_lib.load_arrays(
          config.dataset, data_dir=config.data_dir, source=config.data_source,
          download=config.download)
      self.num_train = self.arrays.num_train
      self.eval_split = 'test'
      self.num_eval = self.arrays.num_test

  def distributed(self, strategy: tf.distribute.Strategy, *, start_step: int, num_steps: int):
    """Global batches [start_step, start_step + num_steps), split over the replicas for fit."""
    c = self.config
    if self.builder is not None:
      def replica_batches(context):
        return imagenet.imagenet_train_dataset(
            self.builder, batch_size=c.batch_size, seed=c.seed, num_steps=num_steps,
            start_step=start_step, image_size=c.image_shape[0], augment=c.augment,
            input_context=context)
      return distribute.distribute_replica_batches(strategy, replica_batches,
                                                   global_batch_size=c.batch_size)
    return distribute.distribute_batches(
        strategy, lambda: pipelines.train_dataset(
            self.arrays, batch_size=c.batch_size, seed=c.seed, start_step=start_step,
            num_steps=num_steps, augment=c.augment),
        global_batch_size=c.batch_size)

  def eval_dataset(self, *, batch_size: int, num_examples: int | None = None
                   ) -> tf.data.Dataset:
    """The first `num_examples` evaluation images (test split; ImageNet: validation, centre crop).

    Returns:
      tf.data.Dataset of (x float32 [B, H, W, C] in [0, 1], y int32 [B]).
    """
    if self.builder is not None:
      return imagenet.imagenet_eval_dataset(self.builder, batch_size=batch_size,
                                            num_examples=num_examples,
                                            image_size=self.config.image_shape[0])
    return pipelines.eval_dataset(self.arrays, batch_size=batch_size, num_examples=num_examples)

  def sample(self, num: int) -> arrays_lib.Arrays:
    """`num` evaluation images in memory, as both splits (the Arrays themselves when in memory)."""
    if self.arrays is not None:
      return self.arrays
    x, y = next(iter(self.eval_dataset(batch_size=num, num_examples=num)))
    x, y = x.numpy(), y.numpy()
    return arrays_lib.Arrays(x_train=x, y_train=y, x_test=x, y_test=y)


def training_data(config: DataSettings,
                  data: 'TrainingData | arrays_lib.Arrays | None' = None) -> TrainingData:
  """The data of the run `config`: `data` itself if a TrainingData, else it opened (see above)."""
  if isinstance(data, TrainingData):
    return data
  return TrainingData(config, data)
