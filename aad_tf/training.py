"""One training run: data -> model -> fit with checkpoints and summaries -> export -> evaluation.

The absl binary `trainers/main.py` only turns flags into a `TrainConfig` and calls `run`.
Everything a run writes lives in `config.model_dir` (see WORKSPACE.md):

    checkpoints/      ckpt-<step>.*, the last `keep_checkpoints` kept
    tensorboard/      scalars (and activation maps, see aad_tf.summaries)
    config.json       the resolved TrainConfig
    export/           saved_model/ (TF Serving) and model.keras
    eval.json         the closing evaluation
"""

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict, Optional, Tuple

import keras
import tensorflow as tf
from absl import logging

from aad_tf import checkpointing
from aad_tf import data as data_lib
from aad_tf import defense as defense_lib
from aad_tf import models
from aad_tf import summaries

OPTIMIZERS = ('adam', 'sgd', 'rmsprop')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a training run (all validated at construction).

  Attributes:
    model_dir: where the run writes (checkpoints, summaries, export, evaluation).
    dataset: 'mnist' or 'cifar10'.
    data_dir: where local data lives (`<dataset>.npz` or a prepared TFDS directory).
    data_source: 'auto', 'npz' or 'tfds'.
    download: allow a TFDS download.
    model: registry name of the classifier.
    keep_prob: dropout keep probability for models that have dropout.
    batch_size: global batch size.
    epochs: training epochs (ignored when train_steps is set).
    train_steps: total optimizer steps; overrides epochs.
    optimizer: 'adam', 'sgd' or 'rmsprop'.
    learning_rate: initial learning rate.
    lr_decay_rate: multiply the learning rate by this every lr_decay_epochs (1 = constant).
    lr_decay_epochs: epochs between decays.
    momentum: for sgd / rmsprop.
    augment: None or 'pad_crop_flip'.
    seed: seeds weights, data order and attacks.
    defense: the DefenseConfig.
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: checkpoints kept.
    log_every: steps between scalar summaries.
  """
  model_dir: str
  dataset: str = 'mnist'
  data_dir: Optional[str] = None
  data_source: str = 'auto'
  download: bool = False
  model: str = 'lenet'
  keep_prob: float = 0.5
  batch_size: int = 100
  epochs: float = 5
  train_steps: Optional[int] = None
  optimizer: str = 'adam'
  learning_rate: float = 1e-3
  lr_decay_rate: float = 1.0
  lr_decay_epochs: float = 1.0
  momentum: float = 0.9
  augment: Optional[str] = None
  seed: int = 0
  defense: defense_lib.DefenseConfig = defense_lib.DefenseConfig()
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  log_every: int = 100

  def __post_init__(self):
    def positive(name, integer=False):
      value = getattr(self, name)
      if value is None or value <= 0 or (integer and int(value) != value):
        kind = 'a positive integer' if integer else 'positive'
        raise ValueError(f'{name} must be {kind}, got {value!r}.')
    data_lib.get_info(self.dataset)
    models.get_spec(self.model)
    if self.data_source not in ('auto', 'npz', 'tfds'):
      raise ValueError(f"data_source must be 'auto', 'npz' or 'tfds', got {self.data_source!r}.")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.')
    if self.augment not in (None, 'pad_crop_flip'):
      raise ValueError(f"augment must be empty or 'pad_crop_flip', got {self.augment!r}.")
    for name in ('batch_size', 'checkpoint_every', 'keep_checkpoints', 'log_every'):
      positive(name, integer=True)
    for name in ('epochs', 'learning_rate', 'lr_decay_rate', 'lr_decay_epochs'):
      positive(name)
    if self.train_steps is not None:
      positive('train_steps', integer=True)
    if not 0.0 < self.keep_prob <= 1.0:
      raise ValueError(f'keep_prob must be in (0, 1], got {self.keep_prob}.')
    if not self.model_dir:
      raise ValueError('model_dir must be set.')

  @property
  def info(self) -> data_lib.DatasetInfo:
    return data_lib.get_info(self.dataset)

  def steps_per_epoch(self, num_train: Optional[int] = None) -> int:
    """Steps per epoch for `num_train` examples (default: the standard train split)."""
    return data_lib.steps_per_epoch(num_train or self.info.num_train, self.batch_size)

  def total_steps(self, num_train: Optional[int] = None) -> int:
    if self.train_steps is not None:
      return int(self.train_steps)
    return int(math.ceil(self.epochs * self.steps_per_epoch(num_train)))

  def to_json(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


def build_classifier(config: TrainConfig) -> Tuple[keras.Model, str]:
  """The classifier of `config` and the name of its Grad-CAM layer."""
  info = config.info
  kwargs = {'keep_prob': config.keep_prob} if config.model == 'lenet' else {}
  classifier = models.get_model(config.model, input_shape=info.image_shape,
                                num_classes=info.num_classes, **kwargs)
  return classifier, models.get_spec(config.model).gradcam_layer


def build_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
  lr = config.learning_rate
  if config.lr_decay_rate != 1.0:
    lr = keras.optimizers.schedules.ExponentialDecay(
        lr, decay_steps=max(1, int(config.lr_decay_epochs * config.steps_per_epoch())),
        decay_rate=config.lr_decay_rate, staircase=True)
  if config.optimizer == 'adam':
    return keras.optimizers.Adam(lr)
  if config.optimizer == 'sgd':
    return keras.optimizers.SGD(lr, momentum=config.momentum)
  return keras.optimizers.RMSprop(lr, momentum=config.momentum, epsilon=1.0)


def build_model(config: TrainConfig) -> defense_lib.AADModel:
  classifier, layer = build_classifier(config)
  model = defense_lib.AADModel(classifier, layer, config.defense)
  model.compile(optimizer=build_optimizer(config))
  model.optimizer.build(model.trainable_variables)
  return model


def write_json(path: str, payload: Dict[str, Any]) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def train(config: TrainConfig, arrays: Optional[data_lib.Arrays] = None,
          callbacks=()) -> defense_lib.AADModel:
  """Trains (or resumes) the run of `config` up to its total step count.

  Args:
    config: the run.
    arrays: the dataset, if already loaded (else loaded from config.data_dir).
    callbacks: extra Keras callbacks. Unless one is a `summaries.TrainSummaries` (trainers/main.py
      passes one that also draws activation maps), scalars are written every
      `config.log_every` steps to `<model_dir>/tensorboard`.

  Returns:
    The trained AADModel (its `.classifier` is what gets exported).
  """
  keras.utils.set_random_seed(config.seed)
  if arrays is None:
    arrays = data_lib.load_arrays(config.dataset, data_dir=config.data_dir,
                                  source=config.data_source, download=config.download)
  model = build_model(config)
  checkpointer = checkpointing.Checkpointer(os.path.join(config.model_dir, 'checkpoints'),
                                            model.classifier, model.optimizer,
                                            max_to_keep=config.keep_checkpoints)
  start = checkpointer.restore()
  total = config.total_steps(arrays.num_train)
  per_epoch = config.steps_per_epoch(arrays.num_train)
  write_json(os.path.join(config.model_dir, 'config.json'), config.to_json())
  if start >= total:
    logging.info('Run already complete (step %d of %d).', start, total)
    return model
  logging.info('Training %s/%s defense=%s aad=%s from step %d to %d (%d steps per epoch).',
               config.dataset, config.model, config.defense.defense, config.defense.aad, start,
               total, per_epoch)
  all_callbacks = [
      checkpointing.StopOnNonFinite(checkpointer),
      checkpointing.CheckpointCallback(checkpointer, config.checkpoint_every),
      *callbacks,
  ]
  if not any(isinstance(c, summaries.TrainSummaries) for c in callbacks):
    all_callbacks.append(summaries.TrainSummaries(
        summaries.log_dir(config.model_dir), scalar_every=config.log_every,
        hparams=config.to_json()))
  started = time.time()
  step = start
  while step < total:
    # One fit call per epoch (or the remainder of an interrupted one), so the progress bar and
    # epoch-level callbacks line up with real epochs and resume lands on the same batch.
    epoch = step // per_epoch
    steps = min(total, (epoch + 1) * per_epoch) - step
    dataset = data_lib.train_dataset(arrays, batch_size=config.batch_size, seed=config.seed,
                                     start_step=step, num_steps=steps, augment=config.augment)
    model.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps,
              callbacks=all_callbacks, shuffle=False, verbose=1 if steps > 20 else 0)
    step = checkpointer.step
    if model.stop_training:  # a callback (e.g. overfitting.OverfitGuard) ended the run
      logging.warning('Training stopped by a callback at step %d of %d.', step, total)
      break
  logging.info('Trained %d steps in %.1f s.', total - start, time.time() - started)
  return model


def write_flags(model_dir: str, flags_text: str) -> None:
  """Saves the resolved flags as `<model_dir>/flags.txt` (a flagfile that replays the run)."""
  tf.io.gfile.makedirs(model_dir)
  path = os.path.join(model_dir, 'flags.txt')
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(flags_text)
  tf.io.gfile.rename(tmp, path, overwrite=True)


# ---------------------------------------------------------------------------------------------
# Reading a finished (or running) run back: export, figures, evaluation of saved runs.

def config_from_json(payload: Dict[str, Any]) -> TrainConfig:
  """Rebuilds the TrainConfig that `train` saved as config.json (unknown keys are ignored)."""
  def build(cls, values):
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})

  payload = dict(payload)
  defense = dict(payload.get('defense') or {})
  defense['attack'] = build(defense_lib.AttackConfig, defense.get('attack') or {})
  payload['defense'] = build(defense_lib.DefenseConfig, defense)
  return build(TrainConfig, payload)


def load_config(model_dir: str) -> TrainConfig:
  """The TrainConfig of the run in `model_dir` (from its config.json)."""
  path = os.path.join(model_dir, 'config.json')
  if not tf.io.gfile.exists(path):
    raise ValueError(f'{path} not found: {model_dir!r} is not a training run directory '
                     f'(train writes config.json when it starts).')
  with tf.io.gfile.GFile(path) as f:
    config = config_from_json(json.load(f))
  # The directory may have been moved or copied since training.
  return dataclasses.replace(config, model_dir=model_dir)


def list_checkpoints(model_dir: str) -> Tuple[Tuple[int, str], ...]:
  """The run's kept checkpoints as (step, path), oldest first."""
  state = tf.train.get_checkpoint_state(os.path.join(model_dir, 'checkpoints'))
  if state is None:
    return ()
  paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
  return tuple(sorted((int(p.rsplit('-', 1)[-1]), p) for p in paths))


def initial_classifier(config: TrainConfig) -> Tuple[keras.Model, str]:
  """The run's classifier at step 0: `train` seeds with config.seed, then builds it first."""
  keras.utils.set_random_seed(config.seed)
  return build_classifier(config)


def restore_classifier(config: TrainConfig, checkpoint: Optional[str] = None, *,
                       classifier: Optional[keras.Model] = None) -> Tuple[keras.Model, str, int]:
  """Builds the run's classifier and loads a checkpoint into it (the optimizer is not needed).

  Args:
    config: the run (e.g. `load_config(model_dir)`).
    checkpoint: a checkpoint path (`.../checkpoints/ckpt-<step>`); None takes the latest.
    classifier: load into this classifier of the run (e.g. to step through checkpoints with
      functions already traced on it) instead of building a new one.

  Returns:
    (classifier, name of its Grad-CAM layer, step of the checkpoint).
  """
  if checkpoint is None:
    kept = list_checkpoints(config.model_dir)
    if not kept:
      raise ValueError(f'No checkpoint in {config.model_dir}/checkpoints.')
    checkpoint = kept[-1][1]
  if classifier is None:
    classifier, layer = build_classifier(config)
  else:
    layer = models.get_spec(config.model).gradcam_layer
  try:
    status = tf.train.Checkpoint(model=classifier).restore(checkpoint).expect_partial()
    status.assert_existing_objects_matched()
  except (tf.errors.OpError, AssertionError, ValueError) as e:
    raise ValueError(f'Cannot load {checkpoint} into a {config.model!r} classifier: {e}') from e
  return classifier, layer, int(checkpoint.rsplit('-', 1)[-1])
