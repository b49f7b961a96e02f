"""TensorBoard summaries of a training run, written outside the compiled step.

`TrainSummaries` is a Keras callback owning one event file in `<model_dir>/tensorboard`:

  scalars  train/<term> for every logged loss term (loss, class_loss, pair_loss, rect_loss,
           pres_loss), train/clean_acc, train/adv_acc, averaged over the steps since the previous
           write; train/learning_rate; train/steps_per_sec. Every `scalar_every` steps.
  images   attention/maps: a fixed panel of held-out images, their clean Grad-CAM and the Grad-CAM
           of their adversarial versions (PGD with the run's training attack) drawn over them, with
           predicted class and confidence (`aad_tf.figures.panel_image`). At step 0, every
           `image_every` steps, and when a fit call ends. The step slider of the Images dashboard
           replays the paper's Fig. 6 evolution live.
  hparams  the run's hyperparameters (HParams dashboard), once when training starts.
  aad/*    for AAD runs given a diagnostic batch: `AADModel.aad_diagnostics` on that fixed batch
           of training images at every scalar write - aad/grad_ratio_rect and
           aad/grad_ratio_pres (gradient norm on the weights of alpha * L_r and beta * L_p over
           that of the base loss), aad/cos_rect, aad/cos_pres, aad/map_mean, aad/map_max,
           aad/area_fraction, ... A ratio near 0 means AAD is not moving the weights.

`write_eval_scalars` adds the closing evaluation (eval/<attack>) to the same directory, so the
HParams dashboard can compare runs of a sweep by robust accuracy.

Steps are the optimizer's global step, so a resumed run continues its curves. Cost: reading the
logs every `scalar_every` steps, and one compiled Grad-CAM + PGD call on the panel (a handful of
images) and one text-only matplotlib render of a NumPy mosaic every `image_every` steps.
"""

import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.plugins.hparams import api as hp

from aad_tf import defenses as defense_lib
from aad_tf import figures

LOG_SUBDIR = 'tensorboard'
IMAGE_TAG = 'attention/maps'
# aad/inference_gap above this warns: the evaluated (inference-mode) network lags the trained one.
INFERENCE_GAP_WARNING = 0.25


def inference_gap_warning(step: int, gap: float) -> Optional[str]:
  """The warning for an aad/inference_gap above INFERENCE_GAP_WARNING, else None."""
  if not gap > INFERENCE_GAP_WARNING:
    return None
  return (f'AAD at step {step}: the inference-mode network classifies {100 * gap:.0f}% fewer of '
          'the diagnostic batch than the training-mode pass the loss saw. BatchNorm moving '
          'statistics that no longer fit the weights do this: AAD terms strong enough to reach '
          'the weights act on the inference-mode network unless --attention_mode=batch '
          '(docs/results/cifar10_study.md).')


def log_dir(model_dir: str) -> str:
  """Where a run's summaries live: `<model_dir>/tensorboard`."""
  return os.path.join(model_dir, LOG_SUBDIR)


def flatten_hparams(config: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
  """Nested config dict -> {'a.b': value} with values the HParams plugin accepts.

  bool, int, float and str pass through; None becomes 'none'; anything else its str().
  """
  flat: Dict[str, Any] = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten_hparams(value, f'{name}.'))
    elif value is None:
      flat[name] = 'none'
    elif isinstance(value, (bool, int, float, str)):
      flat[name] = value
    else:
      flat[name] = str(value)
  return flat


class TrainSummaries(keras.callbacks.Callback):
  """Writes scalars, activation-map images and hparams of a training run.

  Use with `aad_tf.training.train(config, callbacks=[...])`. The model must be an
  `defenses.AADModel` (its classifier, Grad-CAM layer and training attack are used), unless
  `gradcam_layer` and `attack` are given, in which case any functional classifier works.

  Args:
    log_dir: event file directory, normally `log_dir(model_dir)`.
    scalar_every: steps between scalar writes.
    images: float32 [N, H, W, C] in [0, 1], the fixed held-out panel (None: no images).
    labels: int [N] true classes of `images`.
    class_names: display names of the classes (default: the class ids).
    image_every: steps between image writes.
    hparams: the run's hyperparameters (nested dict, e.g. `TrainConfig.to_json()`).
    run_name: the HParams trial id (default: the directory above log_dir).
    gradcam_layer: override the model's Grad-CAM layer.
    attack: override the model's training attack for the panel.
    diagnostic_images: float32 [N, H, W, C] in [0, 1], a fixed batch of training images for the
      aad/* diagnostics of AAD models (None: no diagnostics).
    diagnostic_labels: int [N] their classes.

  Attributes:
    aad_history: [{'step': s, name: value, ...}] of every aad/* write of this callback.
    diagnostic_seconds: time spent in the diagnostics (part of `seconds`).
  """

  def __init__(self, log_dir: str, *, scalar_every: int = 100,
               images: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
               class_names: Optional[Sequence[str]] = None, image_every: int = 200,
               hparams: Optional[Mapping[str, Any]] = None, run_name: Optional[str] = None,
               gradcam_layer: Optional[str] = None,
               attack: Optional[defense_lib.AttackConfig] = None,
               diagnostic_images: Optional[np.ndarray] = None,
               diagnostic_labels: Optional[np.ndarray] = None):
    super().__init__()
    for name, value in (('scalar_every', scalar_every), ('image_every', image_every)):
      if int(value) != value or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}.')
    if (images is None) != (labels is None):
      raise ValueError('images and labels go together: give both or neither.')
    if images is not None:
      images = np.asarray(images, np.float32)
      labels = np.asarray(labels).astype(np.int32)
      if images.ndim != 4 or labels.shape != (len(images),) or not len(images):
        raise ValueError(f'images must be [N, H, W, C] and labels [N] with N >= 1, got '
                         f'{images.shape} and {labels.shape}.')
    if (diagnostic_images is None) != (diagnostic_labels is None):
      raise ValueError('diagnostic_images and diagnostic_labels go together.')
    if diagnostic_images is not None:
      diagnostic_images = np.asarray(diagnostic_images, np.float32)
      diagnostic_labels = np.asarray(diagnostic_labels).astype(np.int32)
      if (diagnostic_images.ndim != 4 or not len(diagnostic_images) or
          diagnostic_labels.shape != (len(diagnostic_images),)):
        raise ValueError(f'diagnostic_images must be [N, H, W, C] and diagnostic_labels [N] with '
                         f'N >= 1, got {diagnostic_images.shape} and {diagnostic_labels.shape}.')
    self._diagnostic_batch = (None if diagnostic_images is None else
                              (tf.constant(diagnostic_images), tf.constant(diagnostic_labels)))
    self.aad_history = []
    self.diagnostic_seconds = 0.0
    self.log_dir = log_dir
    self.scalar_every = int(scalar_every)
    self.image_every = int(image_every)
    self.images, self.labels = images, labels
    self.class_names = tuple(class_names) if class_names else None
    self.hparams = flatten_hparams(hparams) if hparams else None
    self.run_name = run_name or os.path.basename(os.path.dirname(log_dir.rstrip('/')))
    self._gradcam_layer = gradcam_layer
    self._attack = attack
    self._writer = None
    self._maker = None
    self._wrote_hparams = False
    self._epoch_start = 0   # global step before the first batch of this fit call
    self._step = 0          # global step after the last finished batch
    self._count = 0         # batches finished in this fit call
    self._logs = None       # logs of the last finished batch
    self._last = (0, {})    # (batches, running means) at the last scalar write of this fit call
    self._last_time = (0, 0.0)  # (global step, wall time) at the last scalar write
    self._last_scalar_step = self._last_image_step = None
    self.seconds = 0.0      # time spent writing summaries

  # Keras hooks.

  def on_train_begin(self, logs=None):
    if self._writer is None:
      tf.io.gfile.makedirs(self.log_dir)
      self._writer = tf.summary.create_file_writer(self.log_dir)
    step = int(self.model.optimizer.iterations.numpy())
    self._last_time = (step, time.time())
    if self.hparams and not self._wrote_hparams:
      with self._writer.as_default():
        hp.hparams(self.hparams, trial_id=self.run_name)
      self._wrote_hparams = True
    if step == 0 and self.images is not None:
      self._write_images(0)
      self._writer.flush()

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch_start = int(self.model.optimizer.iterations.numpy())
    self._step, self._count, self._logs, self._last = self._epoch_start, 0, None, (0, {})

  def on_train_batch_end(self, batch, logs=None):
    self._count = batch + 1
    self._step = self._epoch_start + self._count
    self._logs = logs
    wrote = False
    if self._step % self.scalar_every == 0:
      self._write_scalars()
      wrote = True
    if self.images is not None and self._step % self.image_every == 0:
      self._write_images(self._step)
      wrote = True
    if wrote:
      self._writer.flush()

  def on_train_end(self, logs=None):
    if self._logs is None:
      return
    if self._last_scalar_step != self._step:
      self._write_scalars()
    if self.images is not None and self._last_image_step != self._step:
      self._write_images(self._step)
    self._writer.flush()

  # Writing.

  def _write_scalars(self) -> None:
    started = time.time()
    means = {name: float(value) for name, value in (self._logs or {}).items()
             if np.ndim(value) == 0}
    count, previous = self._last
    # Keras reports running means since the fit call began; undo them into the mean of the
    # batches since the last write (all training batches have the same size).
    window = {name: (self._count * value - count * previous.get(name, 0.0)) /
              (self._count - count) for name, value in means.items()}
    last_step, last_time = self._last_time
    with self._writer.as_default(step=self._step):
      for name, value in window.items():
        tf.summary.scalar(f'train/{name}', value)
      tf.summary.scalar('train/learning_rate', self._learning_rate())
      if self._step > last_step:
        tf.summary.scalar('train/steps_per_sec', (self._step - last_step) /
                          max(started - last_time, 1e-9))
      self._write_diagnostics()
    self._last = (self._count, means)
    self._last_time = (self._step, time.time())
    self._last_scalar_step = self._step
    self.seconds += time.time() - started

  def _write_diagnostics(self) -> None:
    """aad/* scalars of the diagnostic batch (AAD models only); call inside the writer."""
    if self._diagnostic_batch is None or not self._model_spec().aad:
      return
    started = time.time()
    values = {name: float(value) for name, value in
              self.model.aad_diagnostics(*self._diagnostic_batch).items()}
    for name, value in values.items():
      tf.summary.scalar(f'aad/{name}', value)
    self.aad_history.append({'step': self._step, **values})
    self.diagnostic_seconds += time.time() - started
    logging.info('AAD at step %d: grad ratio rect %.4f pres %.4f (cos %.2f, %.2f), map mean %.3g '
                 'max %.3g, area %.2f, inference gap %+.2f.', self._step,
                 values['grad_ratio_rect'], values['grad_ratio_pres'], values['cos_rect'],
                 values['cos_pres'], values['map_mean'], values['map_max'],
                 values['area_fraction'], values['inference_gap'])
    warning = inference_gap_warning(self._step, values['inference_gap'])
    if warning:
      logging.warning(warning)

  def aad_summary(self) -> Optional[Dict[str, Any]]:
    """The diagnostics of this callback for eval.json: every write and the mean over them."""
    if not self.aad_history:
      return None
    names = [name for name in self.aad_history[0] if name != 'step']
    return {'history': self.aad_history,
            'mean': {name: float(np.mean([h[name] for h in self.aad_history])) for name in names},
            'seconds': self.diagnostic_seconds}

  def _learning_rate(self) -> float:
    optimizer = self.model.optimizer
    optimizer = getattr(optimizer, 'inner_optimizer', optimizer)  # LossScaleOptimizer
    return float(tf.convert_to_tensor(optimizer.learning_rate))

  def _model_spec(self) -> defense_lib.SummarySpec:
    """The classifier, Grad-CAM layer, attack and AAD switch of the model being trained."""
    if isinstance(self.model, defense_lib.AADModel):
      return self.model.summary_spec()
    return defense_lib.SummarySpec(classifier=self.model)

  def _panel_maker(self) -> figures.PanelMaker:
    if self._maker is None:
      spec = self._model_spec()
      layer = self._gradcam_layer or spec.gradcam_layer
      attack = self._attack or spec.attack
      if layer is None or attack is None:
        raise ValueError('TrainSummaries draws activation maps of an AADModel; for another model '
                         'pass gradcam_layer= and attack=.')
      self._maker = figures.PanelMaker(spec.classifier, layer, attack)
    return self._maker

  def _write_images(self, step: int) -> None:
    started = time.time()
    panel = self._panel_maker()(self.images, self.labels)
    names = self.class_names or tuple(str(i) for i in range(panel.probs.shape[-1]))
    image = figures.panel_image(panel, names, title=f'{self.run_name} - step {step}')
    with self._writer.as_default(step=step):
      tf.summary.image(IMAGE_TAG, image[None],
                       description='Top: held-out images. Middle: clean Grad-CAM. Bottom: '
                       f'Grad-CAM of the adversarial image ({panel.attack}). Under each map: '
                       'predicted class and confidence (green correct, red wrong).')
    self._last_image_step = step
    elapsed = time.time() - started
    self.seconds += elapsed
    logging.log_every_n_seconds(logging.INFO, 'Activation maps for step %d written in %.2f s.',
                                600, step, elapsed)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def write_eval_scalars(log_dir: str, step: int, accuracy: Mapping[str, float]) -> None:
  """Writes a closing evaluation as eval/<attack> scalars (fractions) at `step`."""
  writer = tf.summary.create_file_writer(log_dir)
  with writer.as_default(step=int(step)):
    for name, value in accuracy.items():
      tf.summary.scalar(f'eval/{name}', float(value))
  writer.close()


def train_summaries(config, arrays, *, num_images: int, image_every: int,
                    diagnostic_examples: int) -> 'TrainSummaries':
  """The TensorBoard callback of a run: scalars, hparams and an activation-map panel.

  Args:
    config: the run (a training.TrainConfig).
    arrays: its data (data.Arrays (in memory; for a streamed dataset a sample of it).
    num_images: held-out test images in the activation-map panel (0: none).
    image_every: steps between panels.
    diagnostic_examples: training images of the aad/* diagnostics (0 or no AAD: off).
  """
  images = labels = diagnostic_images = diagnostic_labels = None
  if num_images:
    x_test, y_test = arrays.split('test')
    index = figures.pick_examples(y_test, min(num_images, len(y_test)))
    images, labels = x_test[index], y_test[index]
  if config.defense.aad and diagnostic_examples:
    # A fixed batch of training images (the first of the train split), so that successive
    # points of the aad/* curves differ by the weights only.
    x_train, y_train = arrays.split('train')
    diagnostic_images = x_train[:diagnostic_examples]
    diagnostic_labels = y_train[:diagnostic_examples]
  return TrainSummaries(
      log_dir(config.model_dir), scalar_every=config.log_every, images=images,
      labels=labels, class_names=figures.class_names(config.dataset, config.info.num_classes),
      image_every=image_every, hparams=config.to_json(),
      diagnostic_images=diagnostic_images, diagnostic_labels=diagnostic_labels)
