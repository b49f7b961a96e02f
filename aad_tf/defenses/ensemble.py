"""Ensemble adversarial training (Tramer et al. 2018, "Ensemble adversarial training: attacks and
defenses").

The single-step examples (`attacks.single_step`: StepLL or FGSM, optionally R+Step-LL) are
crafted, in rotation per batch, on the model being trained and on each of a set of static
pre-trained models (`ensemble_models`: .keras files or SavedModels, loaded by `load_static_model`).
Loss 0.5 * [L_c(f(x), y) + L_c(f(x_adv), y)].
"""

import dataclasses
import functools
from typing import Callable, Sequence

import keras
import tensorflow as tf

from aad_tf import attacks
from aad_tf.defenses import base
from aad_tf.defenses import standard
from aad_tf.defenses import stepll


# ---------------------------------------------------------------------------------------------
# Static models.

class StaticModel:
  """A frozen pre-trained classifier: images [B, H, W, C] in [0, 1] -> logits [B, K].

  Attributes:
    path: where it was loaded from.
    input_shape: (H, W, C) it accepts (entries may be None).
    num_classes: K.
  """

  def __init__(self, path: str, fn: attacks.ModelFn, input_shape: tuple, num_classes: int,
               owner=None):
    self.path = path
    self.input_shape = tuple(input_shape)
    self.num_classes = int(num_classes)
    self._fn = fn
    self._owner = owner  # keeps a loaded SavedModel (and its variables) alive

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    return self._fn(x)


def load_static_model(path: str) -> StaticModel:
  """Loads a static model from a `.keras` file (safe_mode) or a SavedModel directory.

  A SavedModel is called through its `serving_default` signature, which must take one image
  tensor and return logits (the output named 'logits' if there are several, as written by
  `aad_tf.export`).
  """
  if not tf.io.gfile.exists(path):
    raise ValueError(f'Static model {path!r} does not exist.')
  if path.endswith('.keras'):
    model = keras.models.load_model(path, safe_mode=True, compile=False)
    model.trainable = False
    if len(model.inputs) != 1 or len(model.outputs) != 1:
      raise ValueError(f'Static model {path!r} must have one input and one output (logits).')
    return StaticModel(path, lambda x: model(x, training=False), model.inputs[0].shape[1:],
                       model.outputs[0].shape[-1], owner=model)
  if tf.saved_model.contains_saved_model(path):
    loaded = tf.saved_model.load(path)
    if 'serving_default' not in loaded.signatures:
      raise ValueError(f'SavedModel {path!r} has no serving_default signature.')
    signature = loaded.signatures['serving_default']
    _, inputs = signature.structured_input_signature
    if len(inputs) != 1:
      raise ValueError(f'SavedModel {path!r}: serving_default must take one image tensor, '
                       f'takes {sorted(inputs)}.')
    (input_name, input_spec), = inputs.items()
    outputs = signature.structured_outputs
    if 'logits' in outputs:
      output_name = 'logits'
    elif len(outputs) == 1:
      output_name, = outputs
    else:
      raise ValueError(f'SavedModel {path!r}: serving_default returns {sorted(outputs)}; '
                       f"expected one output or one named 'logits'.")
    call = lambda x: signature(**{input_name: tf.cast(x, input_spec.dtype)})[output_name]
    return StaticModel(path, call, input_spec.shape[1:], outputs[output_name].shape[-1],
                       owner=loaded)
  raise ValueError(f'Static model {path!r} is neither a .keras file nor a SavedModel directory.')


def check_static_model(model: StaticModel, *, input_shape: Sequence[int],
                       num_classes: int) -> None:
  """Raises ValueError unless `model` takes `input_shape` images and predicts `num_classes`."""
  expected = tuple(int(d) for d in input_shape)
  if len(model.input_shape) != len(expected) or any(
      d is not None and int(d) != e for d, e in zip(model.input_shape, expected)):
    raise ValueError(f'Static model {model.path!r} takes images of shape {model.input_shape}, '
                     f'but the dataset has {expected}.')
  if model.num_classes != int(num_classes):
    raise ValueError(f'Static model {model.path!r} predicts {model.num_classes} classes, but the '
                     f'dataset has {num_classes}.')


def load_static_models(paths: Sequence[str], *, input_shape: Sequence[int],
                       num_classes: int) -> list[StaticModel]:
  """Loads and checks every static model of an ensemble (ValueError on the first mismatch)."""
  static = []
  for path in paths:
    model = load_static_model(path)
    check_static_model(model, input_shape=input_shape, num_classes=num_classes)
    static.append(model)
  return static


# ---------------------------------------------------------------------------------------------
# The defense.

@dataclasses.dataclass(frozen=True)
class EnsembleHyperparameters(stepll.StepLLHyperparameters):
  """The static models and single-step attack of ensemble training (+ StepLL's random step)."""
  ensemble_models: tuple[str, ...] = base.hyperparameter(
      (), 'Static models (.keras files or SavedModel dirs) for --defense=ensemble.', path=True)
  ensemble_attack: str = base.hyperparameter(
      'stepll', 'Single-step attack of --defense=ensemble.', choices=attacks.SINGLE_STEP_ATTACKS)


class EnsembleDefense(base.BaseDefense):
  """Ensemble adversarial training (Tramer et al. 2018).

  Batch t takes its single-step examples from source t mod (n + 1): 0 is the model being
  trained, i > 0 the i-th static model. The rotation is a `tf.switch_case` on the optimizer's
  step counter, so it runs inside the compiled step and follows the step across resumes.

  Args:
    static_models: the static models (see `load_static_models`); empty for the registry entry.
    step_fn: () -> the current step (int tensor), read when the step is traced.
  """
  needs_clean_logits = True
  hyperparameters = EnsembleHyperparameters

  def __init__(self, static_models: Sequence[StaticModel] = (),
               step_fn: Callable[[], tf.Tensor] | None = None):
    self.static_models = tuple(static_models)
    self._step_fn = step_fn

  def check_config(self, config):
    if not config.hparams.ensemble_models:
      raise ValueError('defense ensemble needs ensemble_models: paths of static pre-trained '
                       'models (.keras files or SavedModel directories).')

  def bind(self, model):
    classifier = model.classifier
    bound = super().bind(model)
    bound.static_models = tuple(load_static_models(
        model.config.hparams.ensemble_models, input_shape=classifier.inputs[0].shape[1:],
        num_classes=classifier.outputs[0].shape[-1]))
    bound._step_fn = lambda: model.optimizer.iterations
    return bound

  def craft(self, model_fn, x, y, config):
    if not self.static_models or self._step_fn is None:
      raise ValueError('EnsembleDefense has no static models; use the instance returned by '
                       'bind(model) (AADModel does this).')
    sources = [model_fn] + [static for static in self.static_models]
    branches = [functools.partial(attacks.single_step, source, x, y, eps=config.attack.eps,
                                  method=config.hparams.ensemble_attack,
                                  random_step=config.hparams.stepll_random_step,
                                  seed=self.step_seed())
                for source in sources]
    index = tf.cast(tf.math.floormod(self._step_fn(), len(sources)), tf.int32)
    return tf.switch_case(index, branches)

  def check_inputs(self, config, *, input_shape, num_classes):
    load_static_models(config.hparams.ensemble_models, input_shape=input_shape,
                       num_classes=num_classes)

  def loss(self, y, clean_logits, adv_logits, config):
    return standard.half_clean_half_adversarial(y, clean_logits, adv_logits, config)


base.register_defense('ensemble', EnsembleDefense())
