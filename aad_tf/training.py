"""One training run: TrainConfig -> data -> model -> fit with checkpoints and summaries.

`train` trains (or resumes) the run of a `TrainConfig`; the absl binary `trainers/main.py` turns
flags into that config, calls `train`, then exports the classifier (aad_tf.export) and evaluates
it (aad_tf.experiment.closing_evaluation, eval.json). `load_config` and `restore_classifier` read
a run back (aad_tf/runs.py opens a run for the other binaries). What `train` writes into
`config.model_dir` (see WORKSPACE.md):

    checkpoints/      ckpt-<step>.*, the last `keep_checkpoints` kept
    tensorboard/      scalars (and activation maps, see aad_tf.summaries)
    config.json       the resolved TrainConfig (`TrainConfig.to_json`)
"""

import dataclasses
import inspect
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional, Tuple

import keras
import tensorflow as tf
from absl import logging

from aad_tf import checkpointing
from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import distribute
from aad_tf import files
from aad_tf import models
from aad_tf import precision
from aad_tf import summaries

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
    if self.pretrained_weights and 'pretrained_weights' not in inspect.signature(
        models.get_spec(self.model).builder).parameters:
      raise ValueError(f'model {self.model!r} takes no pretrained_weights.')
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


def build_classifier(config: TrainConfig) -> Tuple[keras.Model, str]:
  """The classifier of `config` and the name of its Grad-CAM layer."""
  info = config.info
  kwargs = {'keep_prob': config.keep_prob} if config.model == 'lenet' else {}
  if config.pretrained_weights:
    kwargs['pretrained_weights'] = config.pretrained_weights
  classifier = models.get_model(config.model, input_shape=config.image_shape,
                                num_classes=info.num_classes, **kwargs)
  return classifier, models.get_spec(config.model).gradcam_layer


def build_optimizer(config: TrainConfig, num_train: Optional[int] = None
                    ) -> keras.optimizers.Optimizer:
  """The optimizer; the learning rate decays every lr_decay_epochs epochs of num_train examples."""
  lr = config.learning_rate
  if config.lr_decay_rate != 1.0:
    lr = keras.optimizers.schedules.ExponentialDecay(
        lr, decay_steps=max(1, int(config.lr_decay_epochs * config.steps_per_epoch(num_train))),
        decay_rate=config.lr_decay_rate, staircase=True)
  if config.optimizer == 'adam':
    return keras.optimizers.Adam(lr)
  if config.optimizer == 'sgd':
    return keras.optimizers.SGD(lr, momentum=config.momentum)
  return keras.optimizers.RMSprop(lr, momentum=config.momentum, epsilon=1.0)


def build_model(config: TrainConfig, num_train: Optional[int] = None,
                strategy: Optional[tf.distribute.Strategy] = None) -> defense_lib.AADModel:
  """The compiled AADModel of `config`, its variables created under `strategy` (default: none).

  Its layers compute in bfloat16 when `config.mixed_precision` resolves to 'bfloat16'
  (variables stay float32).
  """
  strategy = strategy or tf.distribute.get_strategy()
  jit = distribute.resolve_jit_compile(config.jit_compile, strategy, config.deterministic)
  policy = precision.keras_policy(config.mixed_precision)
  with strategy.scope(), precision.dtype_policy(policy):
    classifier, layer = build_classifier(config)
    model = defense_lib.AADModel(classifier, layer, config.defense, seed=config.seed)
    model.compile(optimizer=build_optimizer(config, num_train),
                  jit_compile='auto' if jit is None else jit)
    model.optimizer.build(model.trainable_variables)
  return model


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


class ProgressLog(keras.callbacks.Callback):
  """One plain log line every `every` steps, for logs that are not a terminal.

  The line holds the global step, every logged loss term and accuracy (Keras's averages over the
  epoch so far), steps per second since the previous line and the time left at that rate:

    step 200/1200: loss 1.8120, class_loss 1.7923, ..., clean_acc 0.5310, adv_acc 0.2215;
    2.41 steps/s, ETA 6m55s
  """

  def __init__(self, total_steps: int, every: int):
    super().__init__()
    self.total_steps, self.every = total_steps, every
    self._last = None

  def _step(self) -> int:
    return int(self.model.optimizer.iterations.numpy())

  def on_train_begin(self, logs=None):
    self._last = (self._step(), time.time())

  def on_train_batch_end(self, batch, logs=None):
    step = self._step()
    if step % self.every and step != self.total_steps:
      return
    last_step, last_time = self._last
    now = time.time()
    rate = (step - last_step) / max(now - last_time, 1e-9)
    self._last = (step, now)
    values = ', '.join(f'{name} {float(value):.4f}' for name, value in sorted(
        (logs or {}).items(), key=lambda item: (item[0] != 'loss', not item[0].endswith('loss'), item[0])))
    left = (self.total_steps - step) / rate if rate > 0 else float('inf')
    logging.info('step %d/%d: %s; %.2f steps/s, ETA %s', step, self.total_steps, values, rate,
                 format_duration(left))


def format_duration(seconds: float) -> str:
  """'1h02m', '6m55s', '42s' ('?' when unknown)."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
  if seconds >= 60:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds}s'


def train(config: TrainConfig,
          data: 'data_lib.TrainingData | data_lib.Arrays | None' = None,
          callbacks=(), strategy: Optional[tf.distribute.Strategy] = None, *,
          allow_config_change: bool = False, run_files: Optional[Dict[str, str]] = None,
          progress: Optional[str] = None) -> defense_lib.AADModel:
  """Trains (or resumes) the run of `config` up to its total step count.

  Args:
    config: the run.
    data: the run's data (`data.training_data(config)`) or its Arrays, if already loaded; else
      `data.training_data` opens it (in memory or streamed, as the dataset's registry entry says).
    callbacks: extra Keras callbacks. Unless one is a `summaries.TrainSummaries` (trainers/main.py
      passes one that also draws activation maps), scalars are written every
      `config.log_every` steps to `<model_dir>/tensorboard`.
    strategy: where to train (`distribute.create_strategy()`); default: TensorFlow's default
      strategy (one device). The model is built in its scope and each replica gets its slice of
      every global batch. Only the chief writes checkpoints, config.json and summaries (other
      workers' `TrainSummaries` and `TensorBoard` callbacks are dropped).
    allow_config_change: resume a run in config.model_dir even if `config` differs from its
      config.json in a run-defining field (see `check_resume`); the change is recorded in
      config_changes.json.
    run_files: {file name: text} written into config.model_dir beside config.json (e.g.
      trainers/main.py's flags.txt). Nothing is written into config.model_dir before the data,
      the model and the existing run (configuration and checkpoint) have been checked.
    progress: 'bar' (Keras's progress bar), 'log' (a `ProgressLog` line every config.log_every
      steps) or 'none'; default: 'bar' when stdout is a terminal, else 'log'.

  Returns:
    The trained AADModel (its `.classifier` is what gets exported).

  Raises:
    ValueError: a multi-worker strategy that Keras 3 `fit` cannot run (see distribute).
    ConfigChangeError: config.model_dir holds a run with another configuration (at once).
    checkpointing.CheckpointError: the run directory is unwritable (at once), no checkpoint of
      the run restores, or a checkpoint cannot be written (earlier checkpoints are kept).
    checkpointing.NonFiniteLossError: the loss became NaN or Inf (the last good checkpoint is
      kept).
  """
  strategy = strategy or tf.distribute.get_strategy()
  if (distribute.is_multi_worker(strategy) and
      not isinstance(strategy, distribute.KerasMultiWorkerMirroredStrategy)):
    raise ValueError('Keras 3 fit cannot run under a plain MultiWorkerMirroredStrategy '
                     '(keras-team/keras#20585); use distribute.create_strategy().')
  if progress not in (None, 'bar', 'log', 'none'):
    raise ValueError(f"progress must be 'bar', 'log' or 'none', got {progress!r}.")
  chief = distribute.is_chief(strategy)
  checkpoint_dir = os.path.join(config.model_dir, 'checkpoints')
  differences = {}
  if chief:  # Before building anything.
    checkpointing.check_writable(config.model_dir)
    differences = check_resume(config, allow_config_change)
  config = resolve_precision(config)
  if config.deterministic:
    distribute.enable_determinism(config.seed)
  keras.utils.set_random_seed(config.seed)
  source = data_lib.training_data(config, data)
  logging.info('Strategy: %s.', distribute.describe(strategy))
  model = build_model(config, source.num_train, strategy)
  with distribute.worker_scratch_dir(strategy, checkpoint_dir) as write_dir:
    checkpointer = checkpointing.Checkpointer(
        write_dir, model.classifier, model.optimizer,
        max_to_keep=config.keep_checkpoints if chief else 1, restore_directory=checkpoint_dir)
    start = checkpointer.restore()
    if start and config.lr_decay_rate == 1.0:
      # The checkpoint restores the learning-rate variable too; the run's flags win, so that a
      # resumed run can be continued at a new constant rate. The variable is float32: compare
      # at float32 precision, or every resume reports 0.001 replaced by 0.001.
      restored = float(model.optimizer.learning_rate.numpy())
      if not math.isclose(restored, config.learning_rate, rel_tol=1e-6, abs_tol=1e-12):
        logging.info('Learning rate %g from the checkpoint replaced by the configured %g.',
                     restored, config.learning_rate)
      model.optimizer.learning_rate = config.learning_rate
    total = config.total_steps(source.num_train)
    per_epoch = config.steps_per_epoch(source.num_train)
    if chief:  # Everything is checked: the run directory may change now.
      tf.io.gfile.makedirs(config.model_dir)
      if differences:
        record_config_change(config.model_dir, start, differences)
        logging.warning('Continuing %s at step %d with a changed configuration (recorded in '
                        '%s): %s.', config.model_dir, start, CONFIG_CHANGES,
                        ', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in differences.items()))
      files.write_json(os.path.join(config.model_dir, 'config.json'), config.to_json())
      for name, text in (run_files or {}).items():
        files.write_text(os.path.join(config.model_dir, name), text)
    if start >= total:
      logging.info('Run already complete (step %d of %d).', start, total)
      return model
    logging.info('Training %s/%s defense=%s aad=%s from step %d to %d (%d steps per epoch).',
                 config.dataset, config.model, config.defense.defense, config.defense.aad, start,
                 total, per_epoch)
    if not chief:
      callbacks = [c for c in callbacks
                   if not isinstance(c, (summaries.TrainSummaries, keras.callbacks.TensorBoard))]
    if progress is None:
      progress = 'bar' if sys.stdout.isatty() else 'log'
    all_callbacks = [
        checkpointing.StopOnNonFinite(checkpointer),
        checkpointing.CheckpointCallback(checkpointer, config.checkpoint_every),
        *callbacks,
        *([ProgressLog(total, config.log_every)] if chief and progress == 'log' else []),
    ]
    if chief and not any(isinstance(c, summaries.TrainSummaries) for c in callbacks):
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
      dataset = source.distributed(strategy, start_step=step, num_steps=steps)
      model.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps,
                callbacks=all_callbacks, shuffle=False,
                verbose=1 if (chief and progress == 'bar' and steps > 20) else 0)
      step = checkpointer.step
      if model.stop_training:  # a callback (e.g. overfitting.OverfitGuard) ended the run
        logging.warning('Training stopped by a callback at step %d of %d.', step, total)
        break
    logging.info('Trained %d steps in %.1f s.', step - start, time.time() - started)
  return model


# ---------------------------------------------------------------------------------------------
# Reading a finished (or running) run back: export, figures, evaluation of saved runs.

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
    checkpoint: a checkpoint path (`.../checkpoints/ckpt-<step>`); None takes the newest that
      restores (newer corrupt ones are skipped with one warning line and left in place).
    classifier: load into this classifier of the run (e.g. to step through checkpoints with
      functions already traced on it) instead of building a new one.

  Returns:
    (classifier, name of its Grad-CAM layer, step of the checkpoint).

  Raises:
    ValueError: the run has no checkpoint.
    checkpointing.CheckpointError: no checkpoint restores (or not `checkpoint`): corrupt, or
      written by a different model.
  """
  directory = os.path.join(config.model_dir, 'checkpoints')
  if checkpoint is None and not checkpointing.checkpoints_newest_first(directory):
    raise ValueError(f'No checkpoint in {directory}.')
  if classifier is None:
    classifier, layer = build_classifier(config)
  else:
    layer = models.get_spec(config.model).gradcam_layer
  path, failures = checkpointing.restore_newest(
      lambda: tf.train.Checkpoint(model=classifier), directory, partial=True, path=checkpoint)
  checkpointing.log_fallback(path, failures)
  return classifier, layer, int(path.rsplit('-', 1)[-1])
