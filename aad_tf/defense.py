"""Adversarial training with AAD's rectification and preservation losses (paper Sec. 4, Fig. 4).

`AADModel` wraps a functional classifier and owns the training step:

    x_adv = base.craft(f_inference, x, y)                    # no gradient, inference mode
    L     = L_base(x, x_adv, y)                              # Madry / ALP / plain
          + alpha * L_r(x, x_adv)                            # rectification, Eq. 8
          + beta  * L_p(x, x_adv)                            # preservation,  Eq. 9

All four forward passes of Fig. 4 share weights; the preservation term differentiates through
Grad-CAM (second order) while the hard masks of the rectification term are constants. Only the
classifier (`AADModel.classifier`) is ever exported.

Attention passes (`DefenseConfig.attention_mode`). The base loss is computed on one training-mode
pass (clean and adversarial images concatenated into one batch when the base defense needs both),
so BatchNorm statistics are updated once per step, as in plain adversarial training. The four
attention passes of Fig. 4 (g(x), g(x_adv), f(x_m), f(x_adv_m)) run:

  inference (default)  with dropout off and BatchNorm on its moving statistics (not updated):
                       noise-free, so L_p(x, x) = 0 and the rectification distance measures the
                       mask, not two dropout draws; the maps and masked predictions are the ones
                       the evaluation and A^3 see. Gradients still reach every weight (the
                       moving statistics are constants, as in any inference pass). Costs one
                       extra forward/backward pass per step over 'training'.
  training             the earlier behaviour, kept to reproduce older runs: training mode, so every
                       pass draws its own dropout masks and updates BatchNorm statistics (four
                       updates per step, two of them on masked images), and the base loss reuses
                       the Grad-CAM passes' logits.

Diagnostics (`AADModel.aad_diagnostics`): on one batch, the gradient norm on the weights of
alpha * L_r and of beta * L_p relative to that of the base loss, their cosines with it, and the
maps' statistics; `summaries.TrainSummaries` writes them as aad/* scalars.

Base defenses are small objects (`BaseDefense`) in a registry, so new ones (StepLL, ensemble,
TRADES...) plug in without touching the step.
"""

import abc
import copy
import dataclasses
from typing import Callable, Dict, Optional, Tuple, Union

import keras
import tensorflow as tf

from aad_tf import attacks
from aad_tf import gradcam as gradcam_lib
from aad_tf import losses


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The training attack (Madry et al.'s PGD by default).

  Attributes:
    eps: L-inf radius.
    step_size: size of each signed step.
    num_steps: PGD steps.
    random_init: random start in the ball.
    warmup_steps: ramp eps and step_size linearly from eps / warmup_steps to their full values
      over the first warmup_steps optimizer steps (0: no ramp). Adversarial training at MNIST's
      eps 0.3 from scratch can sit at chance for thousands of steps; a short ramp avoids that.
  """
  eps: float = 0.3
  step_size: float = 0.01
  num_steps: int = 40
  random_init: bool = True
  warmup_steps: int = 0

  def __post_init__(self):
    attacks.check_eps(self.eps)
    attacks.check_steps(self.step_size, self.num_steps)
    if not tf.is_tensor(self.warmup_steps) and self.warmup_steps < 0:
      raise ValueError(f'warmup_steps must be >= 0, got {self.warmup_steps}.')

  def at_step(self, step: tf.Tensor) -> 'AttackConfig':
    """This attack at optimizer step `step` (0-based), with the warm-up ramp applied."""
    if not self.warmup_steps:
      return self
    scale = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / float(self.warmup_steps))
    return dataclasses.replace(self, eps=self.eps * scale, step_size=self.step_size * scale,
                               warmup_steps=0)


ATTENTION_MODES = ('inference', 'training')


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
  """What the training step optimises.

  Attributes:
    defense: base adversarial training, a key of `BASE_DEFENSES` ('none', 'madry', 'alp', ...).
    aad: add AAD's rectification and preservation losses.
    alpha: weight of the rectification loss (paper: 0.01).
    beta: weight of the preservation loss (paper: 0.01).
    kappa: attention threshold, 'mean' (paper) or a fixed float.
    classification_loss: 'ce' or 'soft_margin' (the paper's multi-label soft margin).
    alp_weight: weight of the logit-pairing term for 'alp' (Kannan et al.).
    attack: the attack crafting training examples.
    trades_beta: weight of TRADES' KL term (Zhang et al.: 6 on CIFAR-10, 1 on MNIST).
    stepll_random_step: random step before the single step of 'stepll' / 'ensemble', as a
      fraction of eps in [0, 1) (0: plain StepLL; Tramer et al.'s R+Step-LL: 0.5).
    ensemble_models: paths of the static models of 'ensemble' (.keras files or SavedModels).
    ensemble_attack: single-step attack of 'ensemble', 'stepll' or 'fgsm'.
    gradcam_normalize: scaling of the Grad-CAM maps that L_p and the masks use, one of
      `gradcam.NORMALIZATIONS` ('none': raw maps, the TOMM text; 'max'; 'rms_softmax': the
      authors' TF1 code). See aad_tf.gradcam.
    attention_mode: 'inference' (noise-free attention passes, one BatchNorm update per step) or
      'training' (the earlier behaviour); see the module docstring.
  """
  defense: str = 'madry'
  aad: bool = False
  alpha: float = 0.01
  beta: float = 0.01
  kappa: Union[str, float] = 'mean'
  classification_loss: str = 'ce'
  alp_weight: float = 0.5
  attack: AttackConfig = AttackConfig()
  trades_beta: float = 6.0
  stepll_random_step: float = 0.0
  ensemble_models: Tuple[str, ...] = ()
  ensemble_attack: str = 'stepll'
  gradcam_normalize: str = 'none'
  attention_mode: str = 'inference'

  def __post_init__(self):
    object.__setattr__(self, 'ensemble_models', tuple(self.ensemble_models))
    if self.defense not in BASE_DEFENSES:
      raise ValueError(f'defense must be one of {sorted(BASE_DEFENSES)}, got {self.defense!r}.')
    if self.classification_loss not in losses.CLASSIFICATION_LOSSES:
      raise ValueError(f'classification_loss must be one of {losses.CLASSIFICATION_LOSSES}, '
                       f'got {self.classification_loss!r}.')
    if self.aad and not BASE_DEFENSES[self.defense].adversarial:
      raise ValueError(f'aad needs adversarial examples; defense {self.defense!r} crafts none '
                       f'(use madry, alp, ...).')
    for name in ('alpha', 'beta', 'alp_weight', 'trades_beta'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}.')
    if isinstance(self.kappa, str) and self.kappa != 'mean':
      raise ValueError(f"kappa must be 'mean' or a number, got {self.kappa!r}.")
    if not 0.0 <= self.stepll_random_step < 1.0:
      raise ValueError(f'stepll_random_step is a fraction of eps in [0, 1), got '
                       f'{self.stepll_random_step}.')
    if self.ensemble_attack not in ('stepll', 'fgsm'):
      raise ValueError(f"ensemble_attack must be 'stepll' or 'fgsm', got {self.ensemble_attack!r}.")
    gradcam_lib.check_normalize(self.gradcam_normalize)
    if self.attention_mode not in ATTENTION_MODES:
      raise ValueError(f'attention_mode must be one of {ATTENTION_MODES}, got '
                       f'{self.attention_mode!r}.')
    BASE_DEFENSES[self.defense].check_config(self)


# ---------------------------------------------------------------------------------------------
# Base defenses.

class BaseDefense(abc.ABC):
  """One base adversarial training: how to craft x_adv and the classification part of the loss.

  Attributes:
    adversarial: whether `craft` produces adversarial examples.
    needs_clean_logits: whether `loss` uses training-mode clean logits.
  """
  adversarial = True
  needs_clean_logits = False

  def check_config(self, config: DefenseConfig) -> None:
    """Raises ValueError if `config` lacks what this defense needs (called by DefenseConfig)."""

  _seed_fn: Optional[Callable[[], tf.Tensor]] = None

  def bind(self, model: 'AADModel') -> 'BaseDefense':
    """The instance `model` trains with: a copy whose `step_seed` follows the model's step."""
    bound = copy.copy(self)
    bound._seed_fn = model.step_seed
    return bound

  def step_seed(self) -> Optional[tf.Tensor]:
    """A stateless seed [2] for this step's random draws (None when not bound to a model).

    A function of (model seed, optimizer step, replica), so the draws repeat exactly when a run
    resumes from a checkpoint; stateful random ops (tf.random.uniform) would restart their stream.
    """
    return None if self._seed_fn is None else self._seed_fn()

  def craft(self, model_fn: attacks.ModelFn, x: tf.Tensor, y: tf.Tensor,
            config: DefenseConfig) -> Optional[tf.Tensor]:
    a = config.attack
    return attacks.pgd(model_fn, x, y, eps=a.eps, step_size=a.step_size,
                       num_steps=a.num_steps, random_init=a.random_init,
                       seed=self.step_seed() if a.random_init else None)

  @abc.abstractmethod
  def loss(self, y, clean_logits, adv_logits, config: DefenseConfig
           ) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """Returns (per-example loss [B], named per-example parts for metrics)."""


class NoDefense(BaseDefense):
  """Standard training on clean images (the paper's RAW rows)."""
  adversarial = False
  needs_clean_logits = True

  def craft(self, model_fn, x, y, config):
    return None

  def loss(self, y, clean_logits, adv_logits, config):
    lc = losses.classification(y, clean_logits, config.classification_loss)
    return lc, {'class_loss': lc}


class MadryDefense(BaseDefense):
  """Madry et al. 2018: train on PGD examples only."""

  def loss(self, y, clean_logits, adv_logits, config):
    lc = losses.classification(y, adv_logits, config.classification_loss)
    return lc, {'class_loss': lc}


class ALPDefense(BaseDefense):
  """Kannan et al. 2018: half clean, half PGD, plus logit pairing (mean squared difference)."""
  needs_clean_logits = True

  def loss(self, y, clean_logits, adv_logits, config):
    kind = config.classification_loss
    lc = 0.5 * (losses.classification(y, clean_logits, kind) +
                losses.classification(y, adv_logits, kind))
    pair = losses.logit_pairing(clean_logits, adv_logits)
    return lc + config.alp_weight * pair, {'class_loss': lc, 'pair_loss': pair}


BASE_DEFENSES: Dict[str, BaseDefense] = {
    'none': NoDefense(),
    'madry': MadryDefense(),
    'alp': ALPDefense(),
}


def register_defense(name: str, defense: BaseDefense) -> None:
  """Adds a base defense usable as DefenseConfig(defense=name)."""
  if name in BASE_DEFENSES:
    raise ValueError(f'Defense {name!r} is already registered.')
  BASE_DEFENSES[name] = defense


# ---------------------------------------------------------------------------------------------
# The training model.

@dataclasses.dataclass
class LossTerms:
  """The objective's terms on one batch (per example [B]) and what they were computed from.

  base is the base defense's loss and parts its named parts; rect, pres, the maps [B, h, w] and
  the attention areas [B, h, w] are set with AAD only. The logits are the training-mode ones the
  base loss used (None where it needs none).
  """
  base: tf.Tensor
  parts: Dict[str, tf.Tensor]
  clean_logits: Optional[tf.Tensor] = None
  adv_logits: Optional[tf.Tensor] = None
  rect: Optional[tf.Tensor] = None
  pres: Optional[tf.Tensor] = None
  cam: Optional[tf.Tensor] = None
  adv_cam: Optional[tf.Tensor] = None
  area: Optional[tf.Tensor] = None
  adv_area: Optional[tf.Tensor] = None


METRIC_NAMES = ('loss', 'class_loss', 'pair_loss', 'kl_loss', 'rect_loss', 'pres_loss')


class AADModel(keras.Model):
  """Owns adversarial training (+ AAD) of `classifier`; `call` is the classifier.

  Args:
    classifier: functional keras.Model, images [B, H, W, C] in [0, 1] -> logits [B, C].
    gradcam_layer: name of the classifier layer used by Grad-CAM.
    config: a DefenseConfig.
    seed: seeds the training attack's random draws (see `step_seed`).
  """

  def __init__(self, classifier: keras.Model, gradcam_layer: str, config: DefenseConfig,
               seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.classifier = classifier
    self.config = config
    self.seed = int(seed)
    self.base_defense = BASE_DEFENSES[config.defense].bind(self)
    self.features = gradcam_lib.FeatureModel(classifier, gradcam_layer)
    self._trackers = {name: keras.metrics.Mean(name=name) for name in METRIC_NAMES}
    self.clean_acc = keras.metrics.SparseCategoricalAccuracy(name='clean_acc')
    self.adv_acc = keras.metrics.SparseCategoricalAccuracy(name='adv_acc')
    self._diagnostics_fn = None

  def call(self, x, training=False):
    return self.classifier(x, training=training)

  @property
  def metrics(self):
    return list(self._trackers.values()) + [self.clean_acc, self.adv_acc]

  def step_seed(self) -> tf.Tensor:
    """Stateless seed [2] int64 of this training step: fold_in(fold_in([seed, 0], step), replica).

    Read inside `train_step`; the optimizer's step counter is checkpointed, so a resumed run draws
    the same random numbers as an uninterrupted one.
    """
    fold_in = tf.random.experimental.stateless_fold_in
    seed = fold_in(tf.constant([self.seed, 0], tf.int64),
                   tf.cast(self.optimizer.iterations, tf.int64))
    replica = tf.distribute.get_replica_context()
    replica_id = replica.replica_id_in_sync_group if replica is not None else 0
    return fold_in(seed, tf.cast(replica_id, tf.int64))

  def inference_fn(self) -> attacks.ModelFn:
    return lambda images: self.classifier(images, training=False)

  def loss_terms(self, x, y, x_adv) -> 'LossTerms':
    """Every term of the objective on one replica's batch, per example; call under a tape."""
    cfg = self.config
    training_mode = cfg.attention_mode == 'training'
    clean_logits = adv_logits = None
    if not (cfg.aad and training_mode):
      clean_logits, adv_logits = self.training_logits(x, x_adv)
    if cfg.aad:
      # Grad-CAM's inner tape is recorded by the caller's tape (second order).
      attention_features = self.features.fn(training=training_mode)
      cam, clean_attention_logits = gradcam_lib.gradcam(attention_features, x, y,
                                                        normalize=cfg.gradcam_normalize)
      adv_cam, adv_attention_logits = gradcam_lib.gradcam(attention_features, x_adv, y,
                                                          normalize=cfg.gradcam_normalize)
      attention_logits = (clean_attention_logits, adv_attention_logits)
      if training_mode:  # The earlier step: the base loss reuses the attention passes' logits.
        clean_logits, adv_logits = attention_logits
    base, parts = self.base_defense.loss(y, clean_logits, adv_logits, cfg)
    terms = LossTerms(base=base, parts=dict(parts), clean_logits=clean_logits,
                      adv_logits=adv_logits)
    if cfg.aad:
      area = gradcam_lib.attention_area(cam, kappa=cfg.kappa)
      adv_area = gradcam_lib.attention_area(adv_cam, kappa=cfg.kappa)
      masked = gradcam_lib.mask_attention(x, cam, area=area)
      adv_masked = gradcam_lib.mask_attention(x_adv, adv_cam, area=adv_area)
      terms.rect = (
          losses.rectification(attention_logits[0],
                               self.classifier(masked, training=training_mode)) +
          losses.rectification(attention_logits[1],
                               self.classifier(adv_masked, training=training_mode)))
      terms.pres = losses.preservation(cam, adv_cam)
      terms.cam, terms.adv_cam, terms.area, terms.adv_area = cam, adv_cam, area, adv_area
    return terms

  def training_logits(self, x, x_adv) -> Tuple[Optional[tf.Tensor], Optional[tf.Tensor]]:
    """Training-mode logits of what the base loss needs, in one pass (one BatchNorm update)."""
    need_clean = self.base_defense.needs_clean_logits or x_adv is None
    if x_adv is None:
      return self.classifier(x, training=True), None
    if not need_clean:
      return None, self.classifier(x_adv, training=True)
    logits = self.classifier(tf.concat([x, x_adv], axis=0), training=True)
    clean_logits, adv_logits = tf.split(logits, 2, axis=0)
    return clean_logits, adv_logits

  def compute_losses(self, x, y, x_adv) -> Tuple[tf.Tensor, Dict[str, tf.Tensor],
                                                 Optional[tf.Tensor], Optional[tf.Tensor]]:
    """The full objective on one replica's batch; call under a GradientTape.

    Returns:
      (scalar loss to minimise, per-example parts by metric name, training-mode clean logits or
      None, training-mode adversarial logits or None).
    """
    cfg = self.config
    terms = self.loss_terms(x, y, x_adv)
    per_example = terms.base
    parts = terms.parts
    if cfg.aad:
      parts['rect_loss'] = terms.rect
      parts['pres_loss'] = terms.pres
      per_example = per_example + cfg.alpha * terms.rect + cfg.beta * terms.pres
    parts['loss'] = per_example
    return losses.average(per_example), parts, terms.clean_logits, terms.adv_logits

  def step_config(self) -> DefenseConfig:
    """The config at the current optimizer step (the eps warm-up applied)."""
    config = self.config
    if config.attack.warmup_steps:
      config = dataclasses.replace(config, attack=config.attack.at_step(self.optimizer.iterations))
    return config

  def aad_diagnostics(self, x, y) -> Dict[str, tf.Tensor]:
    """Whether AAD moves the weights, measured on one batch at the current weights.

    Crafts x_adv as the training step does, then takes the gradients on the trainable weights of
    the three parts of the objective separately: g_c of the base loss, g_r of alpha * L_r and g_p
    of beta * L_p (batch means). Nothing is updated (no optimizer step; BatchNorm statistics move
    only if the base loss's training pass would move them, as in a training step).

    Returns:
      Scalars: grad_norm_class |g_c|, grad_ratio_rect |g_r| / |g_c|, grad_ratio_pres |g_p| / |g_c|,
      cos_rect cos(g_r, g_c), cos_pres cos(g_p, g_c), rect_loss, pres_loss (batch means, unweighted),
      map_mean (mean cell of the clean maps), map_max (mean over images of each map's maximum),
      adv_map_mean, area_fraction and adv_area_fraction (fraction of the image inside the clean /
      adversarial attention area), empty_area_fraction (images whose clean or adversarial area is
      empty).
    """
    if not self.config.aad:
      raise ValueError('aad_diagnostics needs an AAD model (DefenseConfig(aad=True)).')
    if self._diagnostics_fn is None:
      self._diagnostics_fn = tf.function(self._aad_diagnostics, reduce_retracing=True)
    return self._diagnostics_fn(tf.cast(x, tf.float32), tf.cast(y, tf.int32))

  def _aad_diagnostics(self, x, y):
    cfg = self.config
    config = self.step_config()
    x_adv = self.base_defense.craft(self.inference_fn(), x, y, config)
    variables = self.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
      terms = self.loss_terms(x, y, x_adv)
      base = tf.reduce_mean(terms.base)
      rect = cfg.alpha * tf.reduce_mean(terms.rect)
      pres = cfg.beta * tf.reduce_mean(terms.pres)
    g_c = _flat_gradient(tape.gradient(base, variables), variables)
    g_r = _flat_gradient(tape.gradient(rect, variables), variables)
    g_p = _flat_gradient(tape.gradient(pres, variables), variables)
    del tape
    tiny = 1e-30
    norm_c = tf.norm(g_c)
    cos = lambda a, b: tf.reduce_sum(a * b) / (tf.norm(a) * tf.norm(b) + tiny)
    empty = tf.logical_or(tf.reduce_max(terms.area, axis=[1, 2]) == 0,
                          tf.reduce_max(terms.adv_area, axis=[1, 2]) == 0)
    f32 = lambda t: tf.cast(t, tf.float32)
    return {
        'grad_norm_class': norm_c,
        'grad_ratio_rect': tf.norm(g_r) / (norm_c + tiny),
        'grad_ratio_pres': tf.norm(g_p) / (norm_c + tiny),
        'cos_rect': cos(g_r, g_c),
        'cos_pres': cos(g_p, g_c),
        'rect_loss': f32(tf.reduce_mean(terms.rect)),
        'pres_loss': f32(tf.reduce_mean(terms.pres)),
        'map_mean': f32(tf.reduce_mean(terms.cam)),
        'map_max': f32(tf.reduce_mean(tf.reduce_max(terms.cam, axis=[1, 2]))),
        'adv_map_mean': f32(tf.reduce_mean(terms.adv_cam)),
        'area_fraction': tf.reduce_mean(gradcam_lib.area_fraction(terms.area)),
        'adv_area_fraction': tf.reduce_mean(gradcam_lib.area_fraction(terms.adv_area)),
        'empty_area_fraction': tf.reduce_mean(f32(empty)),
    }

  def train_step(self, data):
    x, y = data
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int32)
    config = self.step_config()
    x_adv = self.base_defense.craft(self.inference_fn(), x, y, config)
    with tf.GradientTape() as tape:
      loss, parts, clean_logits, adv_logits = self.compute_losses(x, y, x_adv)
      scaled = self.optimizer.scale_loss(loss)
    variables = self.trainable_variables
    grads = tape.gradient(scaled, variables)
    self.optimizer.apply(grads, variables)
    for name, value in parts.items():
      self._trackers[name].update_state(value)
    if clean_logits is None:
      clean_logits = self.classifier(x, training=False)
    self.clean_acc.update_state(y, clean_logits)
    if adv_logits is not None:
      self.adv_acc.update_state(y, adv_logits)
    return self._results(parts)

  def test_step(self, data):
    x, y = data
    logits = self.classifier(x, training=False)
    self.clean_acc.update_state(y, logits)
    return {'clean_acc': self.clean_acc.result()}

  def _results(self, parts):
    results = {name: self._trackers[name].result() for name in parts}
    results['clean_acc'] = self.clean_acc.result()
    if self.base_defense.adversarial:
      results['adv_acc'] = self.adv_acc.result()
    return results


def _flat_gradient(grads, variables) -> tf.Tensor:
  """One float32 vector of all gradients (None, for a weight a term does not reach, is zero)."""
  return tf.concat([tf.reshape(tf.zeros_like(v, tf.float32) if g is None else
                               tf.cast(g, tf.float32), [-1]) for g, v in zip(grads, variables)],
                   axis=0)


# Registers 'stepll', 'ensemble' and 'trades', so the registry is complete whenever this module is.
from aad_tf import base_defenses  # noqa: E402,F401  pylint: disable=g-import-not-at-top
