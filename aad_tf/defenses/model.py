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
  batch                with dropout off and BatchNorm on each pass's batch statistics, which the
                       passes do not add to the moving statistics (`batchnorm.frozen_statistics`):
                       the attention terms act on the function the classification loss trains,
                       and the moving statistics still come from the base loss's pass only. Use it
                       for AAD terms that reach the weights on a BatchNorm backbone: in
                       'inference' mode they act on the moving-statistics network, which the
                       classification loss never sees, and can break it while the weights still
                       classify (docs/results/cifar10_study.md). The same passes as 'inference'
                       (its step cost is not measured separately).
  training             the earlier behaviour, kept to reproduce older runs: training mode, so every
                       pass draws its own dropout masks and updates BatchNorm statistics (four
                       updates per step, two of them on masked images, which pull the moving
                       statistics away from the images the network classifies), and the base
                       loss reuses the Grad-CAM passes' logits.

Diagnostics (`AADModel.aad_diagnostics`): on one batch, the gradient norm on the weights of
alpha * L_r and of beta * L_p relative to that of the base loss, their cosines with it, and the
maps' statistics; `summaries.TrainSummaries` writes them as aad/* scalars.

Base defenses are small objects (`base.BaseDefense`) in one registry, each in its own module
(standard, stepll, ensemble, trades), so new ones plug in without touching the step; the loss parts
logged are 'loss', the base defense's `metric_names` and, with AAD, 'rect_loss' and 'pres_loss'.
"""

import contextlib
import dataclasses

import keras
import tensorflow as tf

from aad_tf import attacks
from aad_tf import gradcam as gradcam_lib
from aad_tf import losses
from aad_tf.defenses import base
from aad_tf.defenses.base import DefenseConfig
from aad_tf.models import batchnorm


# ---------------------------------------------------------------------------------------------
# The training model.

@contextlib.contextmanager
def _batch_statistics_without_noise(classifier: keras.Model):
  """Training-mode calls traced inside: batch statistics, no BatchNorm update, no dropout."""
  dropouts = [layer for layer in classifier._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.Dropout)]
  with batchnorm.frozen_statistics(classifier), batchnorm.attribute_set(dropouts, 'rate', 0.0):
    yield


@dataclasses.dataclass
class LossTerms:
  """The objective's terms on one batch (per example [B]) and what they were computed from.

  base is the base defense's loss and parts its named parts; rect, pres, the maps [B, h, w] and
  the attention areas [B, h, w] are set with AAD only. The logits are the training-mode ones the
  base loss used (None where it needs none).
  """
  base: tf.Tensor
  parts: dict[str, tf.Tensor]
  clean_logits: tf.Tensor | None = None
  adv_logits: tf.Tensor | None = None
  rect: tf.Tensor | None = None
  pres: tf.Tensor | None = None
  cam: tf.Tensor | None = None
  adv_cam: tf.Tensor | None = None
  area: tf.Tensor | None = None
  adv_area: tf.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class AttentionPasses:
  """The four attention passes of Fig. 4 on one batch: g(x), g(x_adv), f(x_m), f(x_adv_m).

  cam / adv_cam are the Grad-CAM maps [B, h, w] of x and x_adv (true label), logits / adv_logits
  the logits of those passes, area / adv_area the attention areas, masked_logits /
  adv_masked_logits the logits of the images with their area blanked.
  """
  cam: tf.Tensor
  adv_cam: tf.Tensor
  area: tf.Tensor
  adv_area: tf.Tensor
  logits: tf.Tensor
  adv_logits: tf.Tensor
  masked_logits: tf.Tensor
  adv_masked_logits: tf.Tensor


@dataclasses.dataclass(frozen=True)
class SummarySpec:
  """What `summaries.TrainSummaries` draws and measures of a model (`AADModel.summary_spec`).

  Attributes:
    classifier: the classifier (images -> logits).
    gradcam_layer: its Grad-CAM layer (None: unknown).
    attack: the attack of the adversarial panel (None: unknown).
    aad: whether the model has AAD's terms (and so `aad_diagnostics`).
  """
  classifier: keras.Model
  gradcam_layer: str | None = None
  attack: base.AttackConfig | None = None
  aad: bool = False


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
    self.base_defense = base.get_defense(config.defense).bind(self)
    self.features = gradcam_lib.FeatureModel(classifier, gradcam_layer)
    self._trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names}
    self.clean_acc = keras.metrics.SparseCategoricalAccuracy(name='clean_acc')
    self.adv_acc = keras.metrics.SparseCategoricalAccuracy(name='adv_acc')
    self._diagnostics_fn = None

  def call(self, x, training=False):
    return self.classifier(x, training=training)

  @property
  def metrics(self):
    return list(self._trackers.values()) + [self.clean_acc, self.adv_acc]

  @property
  def metric_names(self) -> tuple[str, ...]:
    """The loss terms a training step logs: 'loss', the base defense's parts, AAD's two."""
    aad = ('rect_loss', 'pres_loss') if self.config.aad else ()
    return ('loss',) + tuple(self.base_defense.metric_names) + aad

  def summary_spec(self) -> SummarySpec:
    """The classifier, Grad-CAM layer, training attack and AAD switch, for summaries."""
    return SummarySpec(classifier=self.classifier, gradcam_layer=self.features.layer_name,
                       attack=self.config.attack, aad=self.config.aad)

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
    # 'batch' and 'training' attention passes normalise with batch statistics.
    batch_statistics = cfg.attention_mode in ('batch', 'training')
    clean_logits = adv_logits = None
    if not (cfg.aad and training_mode):
      clean_logits, adv_logits = self.training_logits(x, x_adv)
    if cfg.aad:
      # 'batch': the attention passes leave the moving statistics to the base loss's pass.
      frozen = (_batch_statistics_without_noise(self.classifier) if cfg.attention_mode == 'batch'
                else contextlib.nullcontext())
      with frozen:
        passes = self.attention_passes(x, y, x_adv, batch_statistics=batch_statistics)
      if training_mode:  # The earlier step: the base loss reuses the attention passes' logits.
        clean_logits, adv_logits = passes.logits, passes.adv_logits
    base_loss, parts = self.base_defense.loss(y, clean_logits, adv_logits, cfg)
    if set(parts) != set(self.base_defense.metric_names):
      raise ValueError(f'Defense {cfg.defense!r} returned the loss parts {tuple(parts)}; it '
                       f'declares metric_names {tuple(self.base_defense.metric_names)}.')
    terms = LossTerms(base=base_loss, parts=dict(parts), clean_logits=clean_logits,
                      adv_logits=adv_logits)
    if cfg.aad:
      terms.rect = (losses.rectification(passes.logits, passes.masked_logits) +
                    losses.rectification(passes.adv_logits, passes.adv_masked_logits))
      terms.pres = losses.preservation(passes.cam, passes.adv_cam)
      terms.cam, terms.adv_cam = passes.cam, passes.adv_cam
      terms.area, terms.adv_area = passes.area, passes.adv_area
    return terms

  def attention_passes(self, x, y, x_adv, *, batch_statistics: bool) -> 'AttentionPasses':
    """The four attention passes of Fig. 4, on batch or moving BatchNorm statistics."""
    cfg = self.config
    # Grad-CAM's inner tape is recorded by the caller's tape (second order).
    attention_features = self.features.fn(training=batch_statistics)
    cam, clean_logits = gradcam_lib.gradcam(attention_features, x, y,
                                            normalize=cfg.gradcam_normalize)
    adv_cam, adv_logits = gradcam_lib.gradcam(attention_features, x_adv, y,
                                              normalize=cfg.gradcam_normalize)
    area = gradcam_lib.attention_area(cam, kappa=cfg.kappa)
    adv_area = gradcam_lib.attention_area(adv_cam, kappa=cfg.kappa)
    masked = gradcam_lib.mask_attention(x, cam, area=area)
    adv_masked = gradcam_lib.mask_attention(x_adv, adv_cam, area=adv_area)
    return AttentionPasses(
        cam=cam, adv_cam=adv_cam, area=area, adv_area=adv_area, logits=clean_logits,
        adv_logits=adv_logits,
        masked_logits=self.classifier(masked, training=batch_statistics),
        adv_masked_logits=self.classifier(adv_masked, training=batch_statistics))

  def training_logits(self, x, x_adv) -> tuple[tf.Tensor | None, tf.Tensor | None]:
    """Training-mode logits of what the base loss needs, in one pass (one BatchNorm update)."""
    need_clean = self.base_defense.needs_clean_logits or x_adv is None
    if x_adv is None:
      return self.classifier(x, training=True), None
    if not need_clean:
      return None, self.classifier(x_adv, training=True)
    logits = self.classifier(tf.concat([x, x_adv], axis=0), training=True)
    clean_logits, adv_logits = tf.split(logits, 2, axis=0)
    return clean_logits, adv_logits

  def compute_losses(self, x, y, x_adv) -> tuple[tf.Tensor, dict[str, tf.Tensor],
                                                 tf.Tensor | None, tf.Tensor | None]:
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

  def aad_diagnostics(self, x, y) -> dict[str, tf.Tensor]:
    """Whether AAD moves the weights, measured on one batch at the current weights.

    Crafts x_adv as the training step does, then takes the gradients on the trainable weights of
    the three parts of the objective separately: g_c of the base loss, g_r of alpha * L_r and g_p
    of beta * L_p (batch means). Nothing is updated (no optimizer step; BatchNorm statistics move
    only if the base loss's training pass would move them, as in a training step).

    Returns:
      Scalars: grad_norm_class |g_c|, grad_ratio_rect |g_r| / |g_c|, grad_ratio_pres
      |g_p| / |g_c|, cos_rect cos(g_r, g_c), cos_pres cos(g_p, g_c), rect_loss, pres_loss (batch
      means, unweighted),
      map_mean (mean cell of the clean maps), map_max (mean over images of each map's maximum),
      adv_map_mean, area_fraction and adv_area_fraction (fraction of the image inside the clean /
      adversarial attention area), empty_area_fraction (images whose clean or adversarial area is
      empty), inference_gap (accuracy of the training-mode logits the base loss saw, on x_adv or
      else x, minus that of the inference-mode network on the same images: large when
      BatchNorm's moving statistics no longer fit the weights, as when strong attention terms
      act on the inference-mode network of a BatchNorm backbone; dropout noise lowers it).
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
    labels = tf.reshape(y, [-1])
    accuracy = lambda logits: tf.reduce_mean(f32(tf.equal(
        tf.argmax(logits, axis=-1, output_type=tf.int32), labels)))
    seen, seen_logits = ((x_adv, terms.adv_logits) if terms.adv_logits is not None else
                         (x, terms.clean_logits))
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
        'inference_gap': (accuracy(seen_logits) -
                          accuracy(self.classifier(seen, training=False))),
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
