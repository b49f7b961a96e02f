"""StepLL adversarial training (Kurakin et al. 2017; R+Step-LL of Tramer et al. 2018).

Single-step least-likely-class examples (`attacks.single_step`, paper Eq. 4); with
`stepll_random_step > 0` Tramer et al.'s R+Step-LL: x' = x + a * sign(N(0, I)), then a StepLL
step of eps - a from x'. Loss 0.5 * [L_c(f(x), y) + L_c(f(x_adv), y)]. The radius is
`DefenseConfig.attack.eps`.
"""

import dataclasses

from aad_tf import attacks
from aad_tf.defenses import base
from aad_tf.defenses import standard


@dataclasses.dataclass(frozen=True)
class StepLLHyperparameters(base.Hyperparameters):
  """R+Step-LL's random step, a fraction of eps (0: plain StepLL)."""
  stepll_random_step: float = base.hyperparameter(
      0.0, 'Random step before the single step of --defense=stepll / ensemble, as a fraction '
      'of --train_eps in [0, 1) (Tramer et al.: 0.5).', lower_bound=0.0)

  def check(self):
    attacks.check_random_step(self.stepll_random_step)


class StepLLDefense(base.BaseDefense):
  """StepLL adversarial training (Kurakin et al. 2017; R+Step-LL of Tramer et al. 2018)."""
  needs_clean_logits = True
  hyperparameters = StepLLHyperparameters

  def craft(self, model_fn, x, y, config):
    return attacks.single_step(model_fn, x, y, eps=config.attack.eps, method='stepll',
                               random_step=config.hparams.stepll_random_step,
                               seed=self.step_seed())

  def loss(self, y, clean_logits, adv_logits, config):
    return standard.half_clean_half_adversarial(y, clean_logits, adv_logits, config)


base.register_defense('stepll', StepLLDefense())
