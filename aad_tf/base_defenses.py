"""More base adversarial trainings: StepLL, ensemble adversarial training, TRADES.

Each is a `defense.BaseDefense` registered in `defense.BASE_DEFENSES`, so AAD composes with it
exactly as with 'madry' and 'alp' (`DefenseConfig(defense='trades', aad=True)`).

  stepll    Kurakin et al. 2017 ("Adversarial machine learning at scale"): single-step
            least-likely-class examples; with `stepll_random_step > 0` Tramer et al. 2018's
            R+Step-LL: x' = x + a * sign(N(0, I)), then a StepLL step of eps - a from x'.
            Loss 0.5 * [L_c(f(x), y) + L_c(f(x_adv), y)].
  ensemble  Tramer et al. 2018 ("Ensemble adversarial training: attacks and defenses"): the
            single-step examples are crafted, in rotation per batch, on the model being trained
            and on each of a set of static pre-trained models. Same loss as stepll.
  trades    Zhang et al. 2019 ("Theoretically principled trade-off between robustness and
            accuracy"): L_c(f(x), y) + beta * KL(p(x) || p(x_adv)), x_adv from PGD on that KL
            started at x + 0.001 * N(0, I).

All three read the radius from `DefenseConfig.attack.eps`; TRADES also its step size and step count.
"""

import functools
from typing import Callable, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from aad_tf import attacks
from aad_tf import defense as defense_lib
from aad_tf import losses

SINGLE_STEP_ATTACKS = ('stepll', 'fgsm')
TRADES_INIT_STD = 0.001  # Zhang et al.'s start: x + 0.001 * N(0, I)


# ---------------------------------------------------------------------------------------------
# Attacks and loss terms.

def single_step(model_fn: attacks.ModelFn, x: tf.Tensor, y: tf.Tensor, *, eps: float,
                method: str = 'stepll', random_step: float = 0.0,
                seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """A single-step training attack, optionally after Tramer et al.'s random step.

  With a = random_step * eps: x' = clip(x + a * sign(N(0, I))), then one step of size eps - a from
  x' ('stepll': towards the least-likely class of x', paper Eq. 4; 'fgsm': up the cross-entropy
  of y). random_step = 0 is plain StepLL / FGSM.

  Args:
    model_fn: x -> logits [B, C], inference mode.
    x: images [B, H, W, C] in [0, 1].
    y: int labels [B] (unused by 'stepll').
    eps: L-inf radius in [0, 1] (a Python number, or a scalar tensor during an eps warm-up).
    method: 'stepll' or 'fgsm'.
    random_step: a / eps in [0, 1) (Tramer et al.: 0.5).
    seed: optional stateless seed [2] for the random step (else a stateful draw).

  Returns:
    Adversarial images [B, H, W, C], within eps of x and in [0, 1], without gradient.
  """
  eps = attacks.check_eps(eps)
  check_random_step(random_step)
  if method not in SINGLE_STEP_ATTACKS:
    raise ValueError(f'method must be one of {SINGLE_STEP_ATTACKS}, got {method!r}.')
  x = tf.convert_to_tensor(x)
  alpha = random_step * eps
  start = x
  if random_step > 0:
    if seed is None:
      noise = tf.random.normal(tf.shape(x), dtype=x.dtype)
    else:
      noise = tf.random.stateless_normal(tf.shape(x), seed, dtype=x.dtype)
    start = attacks.project(x + alpha * tf.sign(noise), x, eps)
  if method == 'stepll':
    x_adv = attacks.stepll(model_fn, start, eps=eps - alpha)
  else:
    x_adv = attacks.fgsm(model_fn, start, y, eps=eps - alpha)
  return tf.stop_gradient(attacks.project(x_adv, x, eps))


def kl_divergence(clean_logits: tf.Tensor, adv_logits: tf.Tensor) -> tf.Tensor:
  """KL(softmax(clean) || softmax(adv)) per example [B]: TRADES' robust term.

  Equals PyTorch's KLDivLoss(log_softmax(adv), softmax(clean)) summed over classes, as in Zhang et
  al.'s code; computed from log-softmaxes so it stays finite for saturated probabilities.
  """
  clean = tf.cast(clean_logits, tf.float32)
  adv = tf.cast(adv_logits, tf.float32)
  log_p = tf.nn.log_softmax(clean)
  return tf.reduce_sum(tf.exp(log_p) * (log_p - tf.nn.log_softmax(adv)), axis=-1)


def trades_attack(model_fn: attacks.ModelFn, x: tf.Tensor, *, eps: float, step_size: float,
                  num_steps: int, seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """TRADES' inner maximisation: PGD on KL(f(x) || f(x_adv)), no labels (Zhang et al. 2019).

  The start is x + 0.001 * N(0, I) (at x itself the KL and its gradient vanish), projected into
  the ball; each step adds step_size * sign(grad KL) and projects.

  Args:
    model_fn: x -> logits [B, C], inference mode.
    x: images [B, H, W, C] in [0, 1].
    eps, step_size, num_steps: the L-inf radius, step size and step count.
    seed: optional stateless seed [2] for the start.

  Returns:
    Adversarial images [B, H, W, C] without gradient.
  """
  eps = attacks.check_eps(eps)
  attacks.check_steps(step_size, num_steps)
  x = tf.convert_to_tensor(x)
  clean_logits = tf.stop_gradient(model_fn(x))
  objective = lambda x_adv: kl_divergence(clean_logits, model_fn(x_adv))
  if seed is None:
    noise = tf.random.normal(tf.shape(x), stddev=TRADES_INIT_STD, dtype=x.dtype)
  else:
    noise = tf.random.stateless_normal(tf.shape(x), seed, stddev=TRADES_INIT_STD, dtype=x.dtype)
  start = attacks.project(x + noise, x, eps)
  return tf.stop_gradient(attacks.iterate(objective, x, start, eps=eps, step_size=step_size,
                                          num_steps=num_steps))


def check_random_step(random_step: float) -> None:
  if not 0.0 <= float(random_step) < 1.0:
    raise ValueError(f'stepll_random_step is a fraction of eps in [0, 1), got {random_step}.')


def _half_clean_half_adversarial(y, clean_logits, adv_logits, config):
  kind = config.classification_loss
  lc = 0.5 * (losses.classification(y, clean_logits, kind) +
              losses.classification(y, adv_logits, kind))
  return lc, {'class_loss': lc}


# ---------------------------------------------------------------------------------------------
# Static models for ensemble adversarial training.

class StaticModel:
  """A frozen pre-trained classifier: images [B, H, W, C] in [0, 1] -> logits [B, K].

  Attributes:
    path: where it was loaded from.
    input_shape: (H, W, C) it accepts (entries may be None).
    num_classes: K.
  """

  def __init__(self, path: str, fn: attacks.ModelFn, input_shape: Tuple, num_classes: int,
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
                       num_classes: int) -> List[StaticModel]:
  """Loads and checks every static model of an ensemble (ValueError on the first mismatch)."""
  static = []
  for path in paths:
    model = load_static_model(path)
    check_static_model(model, input_shape=input_shape, num_classes=num_classes)
    static.append(model)
  return static


# ---------------------------------------------------------------------------------------------
# The defenses.

class StepLLDefense(defense_lib.BaseDefense):
  """StepLL adversarial training (Kurakin et al. 2017; R+Step-LL of Tramer et al. 2018)."""
  needs_clean_logits = True

  def craft(self, model_fn, x, y, config):
    return single_step(model_fn, x, y, eps=config.attack.eps, method='stepll',
                       random_step=config.stepll_random_step, seed=self.step_seed())

  def loss(self, y, clean_logits, adv_logits, config):
    return _half_clean_half_adversarial(y, clean_logits, adv_logits, config)


class EnsembleDefense(defense_lib.BaseDefense):
  """Ensemble adversarial training (Tramer et al. 2018).

  Batch t takes its single-step examples from source t mod (n + 1): 0 is the model being
  trained, i > 0 the i-th static model. The rotation is a `tf.switch_case` on the optimizer's
  step counter, so it runs inside the compiled step and follows the step across resumes.

  Args:
    static_models: the static models (see `load_static_models`); empty for the registry entry.
    step_fn: () -> the current step (int tensor), read when the step is traced.
  """
  needs_clean_logits = True

  def __init__(self, static_models: Sequence[StaticModel] = (),
               step_fn: Optional[Callable[[], tf.Tensor]] = None):
    self.static_models = tuple(static_models)
    self._step_fn = step_fn

  def check_config(self, config):
    if not config.ensemble_models:
      raise ValueError('defense ensemble needs ensemble_models: paths of static pre-trained '
                       'models (.keras files or SavedModel directories).')

  def bind(self, model):
    classifier = model.classifier
    bound = super().bind(model)
    bound.static_models = tuple(load_static_models(
        model.config.ensemble_models, input_shape=classifier.inputs[0].shape[1:],
        num_classes=classifier.outputs[0].shape[-1]))
    bound._step_fn = lambda: model.optimizer.iterations
    return bound

  def craft(self, model_fn, x, y, config):
    if not self.static_models or self._step_fn is None:
      raise ValueError('EnsembleDefense has no static models; use the instance returned by '
                       'bind(model) (AADModel does this).')
    sources = [model_fn] + [static for static in self.static_models]
    branches = [functools.partial(single_step, source, x, y, eps=config.attack.eps,
                                  method=config.ensemble_attack,
                                  random_step=config.stepll_random_step,
                                  seed=self.step_seed())
                for source in sources]
    index = tf.cast(tf.math.floormod(self._step_fn(), len(sources)), tf.int32)
    return tf.switch_case(index, branches)

  def loss(self, y, clean_logits, adv_logits, config):
    return _half_clean_half_adversarial(y, clean_logits, adv_logits, config)


class TradesDefense(defense_lib.BaseDefense):
  """TRADES (Zhang et al. 2019): L_c(f(x), y) + beta * KL(f(x) || f(x_adv))."""
  needs_clean_logits = True

  def craft(self, model_fn, x, y, config):
    a = config.attack
    return trades_attack(model_fn, x, eps=a.eps, step_size=a.step_size, num_steps=a.num_steps,
                         seed=self.step_seed())

  def loss(self, y, clean_logits, adv_logits, config):
    natural = losses.classification(y, clean_logits, config.classification_loss)
    robust = kl_divergence(clean_logits, adv_logits)
    return natural + config.trades_beta * robust, {'class_loss': natural, 'kl_loss': robust}


defense_lib.register_defense('stepll', StepLLDefense())
defense_lib.register_defense('ensemble', EnsembleDefense())
defense_lib.register_defense('trades', TradesDefense())
