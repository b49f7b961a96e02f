"""Every L-inf attack of aad-tf: pure functions of `(model_fn, x, y, *, eps, ...)`.

`model_fn` maps images [B, H, W, C] in [0, 1] to logits [B, C] in inference mode; attention
attacks take a `feature_fn` (x -> (features, logits)) instead. Every attack returns
`stop_gradient` images inside the eps ball around x and inside [0, 1]; loops are
`tf.while_loop`s, so an attack traces once inside a `tf.function` whatever its step count.

Modules (each imports only `core` and its siblings below it; `core` imports `conv_gradient`):
  conv_gradient  a faster input gradient of one-channel convolutions, taken by the tapes of
              `core.input_gradient`, APGD and FAB (module docstring)
  core        checks, `project`, `random_start`, objectives (CE, CW margin), `iterate`
  gradient    FGSM, StepLL, Iter-StepLL, PGD (restarts), CW-L-inf
  attention   A^3 (paper Sec. 4.3) and the adaptive attack on attention-based defenses
  inner       the training attacks of base defenses: single-step (R+Step-LL), TRADES' KL PGD
  apgd        APGD-CE / APGD-DLR / APGD-T (Croce & Hein 2020)
  fab         FAB-T, minimal-perturbation boundary attack (Croce & Hein 2020)
  windowed_model  forward passes of images changed in one window only: the WindowedModel
              that runs a Layout (full pass, windowed query, commit)
  windowed    Square's windowed plan: reads a Keras chain model into a Layout (only the
              window's cone through the layers is recomputed) and probes it against model_fn;
              the plain plan for anything else, a model_fn that wraps the model included
  square      Square Attack, gradient-free (Andriushchenko et al. 2020), AutoAttack's version
  autoattack  AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square), one graph

The names below are the package's interface (`attacks.pgd(...)`); APGD, FAB, Square and
AutoAttack are used through their modules (`attacks.apgd.apgd(...)`,
`from aad_tf.attacks import autoattack`); with `return_fooled=True` APGD, FAB-T and Square also
return which examples they found misclassified themselves.
"""

from aad_tf.attacks import apgd
from aad_tf.attacks import autoattack
from aad_tf.attacks import fab
from aad_tf.attacks import square
from aad_tf.attacks.attention import a3
from aad_tf.attacks.attention import adaptive_attention
from aad_tf.attacks.attention import attention_distance
from aad_tf.attacks.attention import attention_shift
from aad_tf.attacks.core import LOSSES
from aad_tf.attacks.core import ModelFn
from aad_tf.attacks.core import Objective
from aad_tf.attacks.core import check_eps
from aad_tf.attacks.core import check_steps
from aad_tf.attacks.core import cross_entropy
from aad_tf.attacks.core import cw_margin
from aad_tf.attacks.core import input_gradient
from aad_tf.attacks.core import iterate
from aad_tf.attacks.core import least_likely
from aad_tf.attacks.core import loss_objective
from aad_tf.attacks.core import project
from aad_tf.attacks.core import random_start
from aad_tf.attacks.gradient import cw_linf
from aad_tf.attacks.gradient import fgsm
from aad_tf.attacks.gradient import iter_stepll
from aad_tf.attacks.gradient import pgd
from aad_tf.attacks.gradient import stepll
from aad_tf.attacks.inner import SINGLE_STEP_ATTACKS
from aad_tf.attacks.inner import TRADES_INIT_STD
from aad_tf.attacks.inner import check_random_step
from aad_tf.attacks.inner import kl_divergence
from aad_tf.attacks.inner import single_step
from aad_tf.attacks.inner import trades_attack
