"""TRADES (Zhang et al. 2019, "Theoretically principled trade-off between robustness and accuracy").

L_c(f(x), y) + trades_beta * KL(p(x) || p(x_adv)), x_adv from PGD on that KL started at
x + 0.001 * N(0, I) (`attacks.trades_attack`) with `DefenseConfig.attack`'s radius, step size and
step count.
"""

import dataclasses

from aad_tf import attacks
from aad_tf import losses
from aad_tf.defenses import base


@dataclasses.dataclass(frozen=True)
class TradesHyperparameters(base.Hyperparameters):
  """TRADES' weight of the KL term (Zhang et al.: 6 on CIFAR-10, 1 on MNIST)."""
  trades_beta: float = base.hyperparameter(
      6.0, "Weight of TRADES' KL term for --defense=trades.", lower_bound=0.0)


class TradesDefense(base.BaseDefense):
  """TRADES (Zhang et al. 2019): L_c(f(x), y) + beta * KL(f(x) || f(x_adv))."""
  needs_clean_logits = True
  hyperparameters = TradesHyperparameters
  metric_names = ('class_loss', 'kl_loss')

  def craft(self, model_fn, x, y, config):
    a = config.attack
    return attacks.trades_attack(model_fn, x, eps=a.eps, step_size=a.step_size,
                                 num_steps=a.num_steps, seed=self.step_seed())

  def loss(self, y, clean_logits, adv_logits, config):
    natural = losses.classification(y, clean_logits, config.classification_loss)
    robust = attacks.kl_divergence(clean_logits, adv_logits)
    return natural + config.hparams.trades_beta * robust, {'class_loss': natural,
                                                           'kl_loss': robust}


base.register_defense('trades', TradesDefense())
