"""A training run's configuration: TrainConfig (config.json) and the checks of a resumed run.

`TrainConfig` holds everything that defines a run, validated at construction; `train` writes it as
`<model_dir>/config.json` (`TrainConfig.to_json`) and the binaries read it back with
`load_config`. Before a run directory changes, `check_resume` compares the configuration with the
run already there (RESUMABLE_FIELDS may change, the others only with allow_config_change, recorded
by `record_config_change`), and `resolve_precision` settles mixed_precision 'auto'. The training
loop that uses it is aad_tf/training.py, which re-exports every name here.
"""

import dataclasses
import inspect
import json
import math
import os
import time
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf
from absl import logging

from aad_tf import checkpointing
from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import files
from aad_tf import models
from aad_tf import precision
from aad_tf import schedules

OPTIMIZERS = ('adam', 'sgd', 'rmsprop')

# TrainConfig fields that a resumed run may change: where data and output live, the budget,
# bookkeeping, the hardware settings, the evaluation eps (it does not change training), and the
# constant learning rate (the flags win over the checkpoint's, see `train`). Every other field
# defines the run (dataset, model, defense, AAD settings, attack, seed, ...) and changes only with
# allow_config_change.
RESUMABLE_FIELDS = ('model_dir', 'data_dir', 'data_source', 'download', 'manual_dir', 'epochs',
                    'train_steps', 'learning_rate', 'checkpoint_every', 'keep_checkpoints',
                    'log_every', 'mixed_precision', 'jit_compile', 'deterministic', 'eval_eps')
# Written into config.json for the binaries that read a run, derived from the run-defining fields
# (gradcam_layer from model), never compared on resume: an older config.json lacks them.
DERIVED_FIELDS = ('gradcam_layer',)
CONFIG_CHANGES = 'config_changes.json'


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a training run (all validated at construction).

  Attributes:
    model_dir: where the run writes (checkpoints, summaries, export, evaluation).
    dataset: a registered dataset (`data.available_datasets()`).
    data_dir: where local data lives (`<dataset>.npz` or a prepared TFDS directory).
    data_source: 'auto', 'npz' or 'tfds'.
    download: allow a TFDS download.
    model: registry name of the classifier.
    keep_prob: dropout keep probability for models that have dropout.
    model_width: channels of the backbone's first stage, for backbones that take `width`
      (ResNet9: 64 is the standard network); None: the backbone's default.
    batch_size: global batch size.
    epochs: training epochs (ignored when train_steps is set).
    train_steps: total optimizer steps; overrides epochs.
    optimizer: 'adam', 'sgd' or 'rmsprop'.
    learning_rate: initial learning rate.
    lr_decay_rate: multiply the learning rate by this every lr_decay_epochs (1 = constant).
    lr_decay_epochs: epochs between decays.
    lr_schedule: 'step' (lr_decay_rate every lr_decay_epochs) or 'cyclic' (0 -> learning_rate
      at 40% of the run -> 0 at its end); see aad_tf/schedules.py. A schedule follows the
      optimizer's step, so a resume continues it; a resume with a larger budget (epochs,
      train_steps) stretches the cyclic schedule to the new end from the step reached.
    momentum: for sgd / rmsprop.
    weight_decay: decoupled weight decay of the optimizer (Keras's `weight_decay`: every step
      multiplies each variable by 1 - learning_rate * weight_decay); 0: none.
    augment: None or 'pad_crop_flip'.
    seed: seeds weights, data order and attacks.
    defense: the DefenseConfig.
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: checkpoints kept.
    log_every: steps between scalar summaries.
    pretrained_weights: local weights file to start from (models that take one: resnet50,
      inception_v3).
    image_size: input height and width for streamed datasets (ImageNet: 224); None: the
      dataset's default.
    manual_dir: where ImageNet's manual-download tar files are (see data.imagenet_builder).
    mixed_precision: 'float32', 'bfloat16' (compute in bfloat16, keep variables in float32:
      'mixed_bfloat16') or 'auto' (bfloat16 where the hardware has it, see aad_tf.precision;
      `train` resolves it and config.json records the choice; a resumed 'auto' run keeps its
      recorded choice). The bools of older config.json files read as bfloat16 (True) and
      float32 (False). bfloat16 rather than float16: it needs no loss scaling (so no skipped
      steps that would shift the data position of a resumed run) and keeps float32's range for
      Grad-CAM's inner gradient, which no loss scale protects. Evaluation and export are float32
      whatever this says (precision.float32_copy).
    jit_compile: compile the train step with XLA; None lets Keras decide. XLA is off under
      several replicas and under `deterministic` (see distribute.resolve_jit_compile).
    deterministic: deterministic TF ops and seeds, so that a resumed run ends with the same
      weights as an uninterrupted one.
    eval_eps: the L-inf radius the run is evaluated at (trainers.main's closing evaluation and
      overfitting guard, then trainers.evaluate by default); None: the dataset's default.
      Recorded, never used by `train`.
  """
  model_dir: str
  dataset: str = 'mnist'
  data_dir: Optional[str] = None
  data_source: str = 'auto'
  download: bool = False
  model: str = 'lenet'
  keep_prob: float = 0.5
  model_width: Optional[int] = None
  batch_size: int = 100
  epochs: float = 5
  train_steps: Optional[int] = None
  optimizer: str = 'adam'
  learning_rate: float = 1e-3
  lr_decay_rate: float = 1.0
  lr_decay_epochs: float = 1.0
  lr_schedule: str = 'step'
  momentum: float = 0.9
  weight_decay: float = 0.0
  augment: Optional[str] = None
  seed: int = 0
  defense: defense_lib.DefenseConfig = defense_lib.DefenseConfig()
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  log_every: int = 100
  pretrained_weights: Optional[str] = None
  image_size: Optional[int] = None
  manual_dir: Optional[str] = None
  mixed_precision: str = 'float32'
  jit_compile: Optional[bool] = None
  deterministic: bool = False
  eval_eps: Optional[float] = None

  def __post_init__(self):
    def positive(name, integer=False):
      value = getattr(self, name)
      if value is None or value <= 0 or (integer and int(value) != value):
        kind = 'a positive integer' if integer else 'positive'
        raise ValueError(f'{name} must be {kind}, got {value!r}.')
    info = data_lib.get_info(self.dataset)
    models.get_spec(self.model)
    # Frozen: normalised in place, so that config.json never holds the bools of older versions.
    object.__setattr__(self, 'mixed_precision', precision.normalize(self.mixed_precision))
    if self.data_source not in ('auto', 'npz', 'tfds'):
      raise ValueError(f"data_source must be 'auto', 'npz' or 'tfds', got {self.data_source!r}.")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.')
    augmentations = info.augmentations
    if self.augment not in augmentations:
      raise ValueError(f'augment must be one of {augmentations} for {self.dataset}, got '
                       f'{self.augment!r}.')
    if self.image_size is not None:
      if not info.streamed:
        raise ValueError(f'image_size applies to streamed datasets only; '
                         f'{self.dataset} images are {info.image_shape}.')
      positive('image_size', integer=True)
    builder_args = inspect.signature(models.get_spec(self.model).builder).parameters
    if self.pretrained_weights and 'pretrained_weights' not in builder_args:
      raise ValueError(f'model {self.model!r} takes no pretrained_weights.')
    if self.model_width is not None:
      if 'width' not in builder_args:
        raise ValueError(f'model {self.model!r} takes no model_width.')
      positive('model_width', integer=True)
    if self.lr_schedule not in schedules.SCHEDULES:
      raise ValueError(f'lr_schedule must be one of {schedules.SCHEDULES}, got '
                       f'{self.lr_schedule!r}.')
    if not 0.0 <= self.weight_decay < 1.0:
      raise ValueError(f'weight_decay must be in [0, 1), got {self.weight_decay}.')
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
    if self.eval_eps is not None and not 0.0 <= self.eval_eps <= 1.0:
      raise ValueError(f'eval_eps must be in [0, 1], got {self.eval_eps}.')

  @property
  def info(self) -> data_lib.DatasetInfo:
    return data_lib.get_info(self.dataset)

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    """(H, W, C) of the classifier's input."""
    shape = self.info.image_shape
    return shape if self.image_size is None else (self.image_size, self.image_size, shape[-1])

  def steps_per_epoch(self, num_train: Optional[int] = None) -> int:
    """Steps per epoch for `num_train` examples (default: the standard train split)."""
    return data_lib.steps_per_epoch(num_train or self.info.num_train, self.batch_size)

  def total_steps(self, num_train: Optional[int] = None) -> int:
    if self.train_steps is not None:
      return int(self.train_steps)
    return int(math.ceil(self.epochs * self.steps_per_epoch(num_train)))

  @property
  def gradcam_layer(self) -> str:
    """The name of the classifier's Grad-CAM layer (the model registry's)."""
    return models.get_spec(self.model).gradcam_layer

  def to_json(self) -> Dict[str, Any]:
    """config.json: every field, and the DERIVED_FIELDS for the binaries that read the run."""
    return {**dataclasses.asdict(self), 'gradcam_layer': self.gradcam_layer}


def resolve_precision(config: TrainConfig) -> TrainConfig:
  """`config` with mixed_precision 'auto' resolved: the run's recorded choice, else the hardware's.

  A run that already has a config.json keeps the precision recorded there (resolved when it
  started), so a resume on another machine trains on as it began; a new run asks
  `precision.resolve('auto')`. An explicit 'float32' or 'bfloat16' is kept as it is.
  """
  if config.mixed_precision != 'auto':
    return config
  path = os.path.join(config.model_dir, 'config.json')
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      recorded = json.load(f).get('mixed_precision')
    if recorded is not None and precision.normalize(recorded) != 'auto':
      chosen = precision.normalize(recorded)
      logging.info('--mixed_precision=auto: %s, as recorded in %s.', chosen, path)
      return dataclasses.replace(config, mixed_precision=chosen)
  return dataclasses.replace(config, mixed_precision=precision.resolve('auto'))


class ConfigChangeError(ValueError):
  """Resuming a run with a configuration that differs from the one it was trained with."""


def _flatten(payload: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  flat = {}
  for key, value in payload.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_differences(previous: Dict[str, Any], config: 'TrainConfig'
                       ) -> Dict[str, Tuple[Any, Any]]:
  """The run-defining fields (not RESUMABLE_FIELDS) where `config` differs from a saved one.

  Args:
    previous: a run's config.json. Fields it lacks (saved by an older version) take their
      defaults, so adding a field with a default changes nothing for old runs.
    config: the configuration about to resume it.

  Returns:
    {dotted field name, e.g. 'defense.attack.eps': (saved value, new value)}, sorted by name.
  """
  try:
    previous = config_from_json(previous).to_json()
  except (TypeError, ValueError):  # an older config that no longer validates: compare as saved
    pass
  def normalized(payload):
    return _flatten(json.loads(json.dumps(payload, default=str)))
  old, new = normalized(previous), normalized(config.to_json())
  return {name: (old.get(name), new.get(name)) for name in sorted(set(old) | set(new))
          if name.split('.')[0] not in RESUMABLE_FIELDS + DERIVED_FIELDS and
          old.get(name) != new.get(name)}


def check_resume(config: 'TrainConfig', allow_config_change: bool = False
                 ) -> Dict[str, Tuple[Any, Any]]:
  """Compares `config` with the run already in `config.model_dir`, if it has checkpoints.

  Args:
    config: the configuration about to train in config.model_dir.
    allow_config_change: accept differences (`train` then records them in config_changes.json).

  Returns:
    The differences (see `config_differences`); {} for a new run.

  Raises:
    ConfigChangeError: the run exists, was trained with different run-defining fields, and
      allow_config_change is False. The message is one line naming each differing field.
  """
  path = os.path.join(config.model_dir, 'config.json')
  if not (tf.io.gfile.exists(path) and
          checkpointing.checkpoints_newest_first(os.path.join(config.model_dir, 'checkpoints'))):
    return {}
  with tf.io.gfile.GFile(path) as f:
    differences = config_differences(json.load(f), config)
  if differences and not allow_config_change:
    listed = ', '.join(f'{name} ({old!r} -> {new!r})' for name, (old, new) in differences.items())
    raise ConfigChangeError(
        f'{config.model_dir} holds a run trained with another configuration: {listed}. Resume '
        f'it with its own flags (--flagfile={os.path.join(config.model_dir, "flags.txt")}), use '
        f'a new --model_dir, or pass --allow_config_change to continue it with the new ones.')
  return differences


def record_config_change(model_dir: str, step: int, differences: Dict[str, Tuple[Any, Any]]
                         ) -> None:
  """Appends an accepted configuration change to `<model_dir>/config_changes.json`."""
  path = os.path.join(model_dir, CONFIG_CHANGES)
  history = []
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      history = json.load(f)
  history.append({'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), 'step': step,
                  'changes': {name: {'from': old, 'to': new}
                              for name, (old, new) in differences.items()}})
  files.write_json(path, history)



def config_from_json(payload: Dict[str, Any]) -> TrainConfig:
  """Rebuilds the TrainConfig that `train` saved as config.json (unknown keys are ignored)."""
  def build(cls, values):
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})

  payload = dict(payload)
  # Reads the layout of runs written before each defense owned its hyperparameters too.
  payload['defense'] = defense_lib.DefenseConfig.from_json(payload.get('defense') or {})
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
