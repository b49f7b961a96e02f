"""The standard base defenses: none (clean training), Madry et al.'s PGD training, ALP.

  none   standard training on clean images (the paper's RAW rows).
  madry  Madry et al. 2018: L_c(f(x_adv), y), x_adv from PGD (`DefenseConfig.attack`).
  alp    Kannan et al. 2018: half clean, half PGD, plus logit pairing,
         0.5 * [L_c(f(x), y) + L_c(f(x_adv), y)] + alp_weight * mean((z(x) - z(x_adv))^2).
"""

import dataclasses

from aad_tf import losses
from aad_tf.defenses import base


def half_clean_half_adversarial(y, clean_logits, adv_logits, config: base.DefenseConfig):
  """0.5 * [L_c(f(x), y) + L_c(f(x_adv), y)] per example [B], and its parts {'class_loss'}.

  The classification part of ALP, StepLL and ensemble adversarial training.
  """
  kind = config.classification_loss
  lc = 0.5 * (losses.classification(y, clean_logits, kind) +
              losses.classification(y, adv_logits, kind))
  return lc, {'class_loss': lc}


class NoDefense(base.BaseDefense):
  """Standard training on clean images (the paper's RAW rows)."""
  adversarial = False
  needs_clean_logits = True

  def craft(self, model_fn, x, y, config):
    return None

  def loss(self, y, clean_logits, adv_logits, config):
    lc = losses.classification(y, clean_logits, config.classification_loss)
    return lc, {'class_loss': lc}


class MadryDefense(base.BaseDefense):
  """Madry et al. 2018: train on PGD examples only."""

  def loss(self, y, clean_logits, adv_logits, config):
    lc = losses.classification(y, adv_logits, config.classification_loss)
    return lc, {'class_loss': lc}


@dataclasses.dataclass(frozen=True)
class ALPHyperparameters(base.Hyperparameters):
  """ALP's logit-pairing weight."""
  alp_weight: float = base.hyperparameter(0.5, 'Logit-pairing weight for --defense=alp.',
                                          lower_bound=0.0)


class ALPDefense(base.BaseDefense):
  """Kannan et al. 2018: half clean, half PGD, plus logit pairing (mean squared difference)."""
  needs_clean_logits = True
  hyperparameters = ALPHyperparameters
  metric_names = ('class_loss', 'pair_loss')

  def loss(self, y, clean_logits, adv_logits, config):
    lc, parts = half_clean_half_adversarial(y, clean_logits, adv_logits, config)
    pair = losses.logit_pairing(clean_logits, adv_logits)
    return lc + config.hparams.alp_weight * pair, {**parts, 'pair_loss': pair}


base.register_defense('none', NoDefense())
base.register_defense('madry', MadryDefense())
base.register_defense('alp', ALPDefense())
