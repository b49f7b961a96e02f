"""One training run: TrainConfig -> data -> model -> fit with checkpoints and summaries.

`train` trains (or resumes) the run of a `TrainConfig`; the absl binary `trainers/main.py` turns
flags into that config, calls `train`, then exports the classifier (aad_tf.export) and evaluates
it (aad_tf.runs.closing_evaluation, eval.json). `load_config` and `restore_classifier` read
a run back (aad_tf/runs.py opens a run for the other binaries). The configuration and the checks
of a resumed run live in aad_tf/train_config.py (re-exported here: `training.TrainConfig`,
`training.check_resume`, ...). What `train` writes into `config.model_dir` (see WORKSPACE.md):

    checkpoints/      ckpt-<step>.*, the last `keep_checkpoints` kept
    tensorboard/      scalars (and activation maps, see aad_tf.summaries)
    config.json       the resolved TrainConfig (`TrainConfig.to_json`)
"""

import math
import os
import sys
import time
from typing import Dict, Optional, Tuple

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
from aad_tf import schedules
from aad_tf import summaries
# The configuration half of a run, re-exported: callers use training.TrainConfig etc.
from aad_tf.train_config import CONFIG_CHANGES  # noqa: F401
from aad_tf.train_config import DERIVED_FIELDS  # noqa: F401
from aad_tf.train_config import OPTIMIZERS  # noqa: F401
from aad_tf.train_config import RESUMABLE_FIELDS  # noqa: F401
from aad_tf.train_config import ConfigChangeError  # noqa: F401
from aad_tf.train_config import TrainConfig
from aad_tf.train_config import check_resume
from aad_tf.train_config import config_differences  # noqa: F401
from aad_tf.train_config import config_from_json  # noqa: F401
from aad_tf.train_config import load_config  # noqa: F401
from aad_tf.train_config import record_config_change
from aad_tf.train_config import resolve_precision


def build_classifier(config: TrainConfig) -> Tuple[keras.Model, str]:
  """The classifier of `config` and the name of its Grad-CAM layer."""
  info = config.info
  kwargs = {'keep_prob': config.keep_prob} if config.model == 'lenet' else {}
  if config.pretrained_weights:
    kwargs['pretrained_weights'] = config.pretrained_weights
  if config.model_width is not None:
    kwargs['width'] = config.model_width
  classifier = models.get_model(config.model, input_shape=config.image_shape,
                                num_classes=info.num_classes, **kwargs)
  return classifier, models.get_spec(config.model).gradcam_layer


def build_optimizer(config: TrainConfig, num_train: Optional[int] = None
                    ) -> keras.optimizers.Optimizer:
  """The optimizer, its learning rate following `config.lr_schedule` over num_train examples."""
  lr = schedules.learning_rate(
      config.lr_schedule, initial=config.learning_rate, total_steps=config.total_steps(num_train),
      steps_per_epoch=config.steps_per_epoch(num_train), decay_rate=config.lr_decay_rate,
      decay_epochs=config.lr_decay_epochs)
  decay = config.weight_decay or None
  if config.optimizer == 'adam':
    return keras.optimizers.Adam(lr, weight_decay=decay)
  if config.optimizer == 'sgd':
    return keras.optimizers.SGD(lr, momentum=config.momentum, weight_decay=decay)
  return keras.optimizers.RMSprop(lr, momentum=config.momentum, epsilon=1.0, weight_decay=decay)


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
    if start and config.lr_schedule == 'step' and config.lr_decay_rate == 1.0:
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
