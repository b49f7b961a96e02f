"""AutoAttack, standard version, L-inf (Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020), native TF2.

The ensemble the RobustBench leaderboards report, run as the reference `run_standard_evaluation`
does: the attacks follow one another, each only on the examples that the clean model and every
earlier attack still classify correctly, and an example counts as robust only if all four fail:

  1. APGD-CE   untargeted APGD on cross-entropy, 100 iterations, 1 random start;
  2. APGD-T    targeted DLR loss towards each of the 9 classes ranked highest after the first on
               the clean input, 100 iterations and 1 random start each;
  3. FAB-T     targeted FAB towards the same 9 classes, 100 iterations each, started at x,
               alpha_max 0.1, eta 1.05, beta 0.9 (`aad_tf.attacks.fab`);
  4. Square    5000 queries, p_init 0.8, 1 restart, p's schedule not rescaled to the budget
               (`resc_schedule=False` in the reference; `aad_tf.attacks.square`).

An example counts as fooled by a stage if the stage itself found it misclassified (each attack
returns its own per-example flags, from model_fn's logits at the point it returns) or if
model_fn misclassifies the stage's point on the stage's sub-batch (the reference's check). Both
are model_fn's verdicts on a point inside the ball, so neither is dropped for the other: the
robust flags are never higher than the reference's check alone would give, and nothing is
re-predicted afterwards at another batch size (APGD returns the first misclassified iterate,
which lies near the boundary, where a batch-size-dependent rounding could flip it back; issue
26). `autoattack_stages` returns these flags after each stage; `trainers.evaluate
--attacks=autoattack` reports exactly them (the evaluation's own re-check of x_adv cannot
change them: a robust example's x_adv is x, whose prediction is the 'clean' flag).

Everything, the subsets included, is one graph: `autoattack` traces once inside a `tf.function`
and copies nothing to the host between attacks.
"""

import keras
import tensorflow as tf

from aad_tf.attacks import apgd as apgd_lib
from aad_tf.attacks import core
from aad_tf.attacks import fab as fab_lib
from aad_tf.attacks import square as square_lib

VERSION = 'standard (Croce & Hein 2020), aad-tf native'
STAGES = ('apgd_ce', 'apgd_t', 'fab_t', 'square')
NUM_STEPS = 100
NUM_TARGET_CLASSES = 9
SQUARE_QUERIES = 5000
SQUARE_P_INIT = 0.8


def standard_params() -> dict[str, object]:
  """The hyperparameters of the standard version, as written to robustness.json."""
  return {'version': VERSION, 'norm': 'Linf', 'attacks': list(STAGES),
          'apgd_ce': {'num_steps': NUM_STEPS, 'num_restarts': 1},
          'apgd_t': {'num_steps': NUM_STEPS, 'num_target_classes': NUM_TARGET_CLASSES,
                     'num_restarts': 1},
          'fab_t': {'num_steps': NUM_STEPS, 'num_target_classes': NUM_TARGET_CLASSES,
                    'num_restarts': 1, 'alpha_max': fab_lib.ALPHA_MAX, 'eta': fab_lib.ETA,
                    'beta': fab_lib.BETA},
          'square': {'num_queries': SQUARE_QUERIES, 'p_init': SQUARE_P_INIT, 'num_restarts': 1,
                     'rescale_schedule': False}}


def stage_attacks(model_fn: core.ModelFn, *, eps: float, num_steps: int = NUM_STEPS,
                  num_target_classes: int = NUM_TARGET_CLASSES,
                  square_queries: int = SQUARE_QUERIES,
                  model: keras.Model | None = None) -> dict[str, object]:
  """The four attacks of the standard version by name: (x, y, stateless seed) -> (x_adv,
  fooled bool [n]), fooled being the attack's own verdict.

  `model`, the Keras model that model_fn runs, is optional; Square uses it to recompute only
  the activations its window reaches (`aad_tf.attacks.windowed`), when model_fn is the model's
  own inference call.
  """
  return {
      'apgd_ce': lambda xs, ys, s: apgd_lib.apgd(
          model_fn, xs, ys, eps=eps, num_steps=num_steps, loss='ce', seed=s,
          return_fooled=True),
      'apgd_t': lambda xs, ys, s: apgd_lib.apgd_targeted(
          model_fn, xs, ys, eps=eps, num_steps=num_steps,
          num_target_classes=num_target_classes, seed=s, return_fooled=True),
      'fab_t': lambda xs, ys, s: fab_lib.fab_targeted(
          model_fn, xs, ys, eps=eps, num_steps=num_steps,
          num_target_classes=num_target_classes, return_fooled=True),
      'square': lambda xs, ys, s: square_lib.square_linf(
          model_fn, xs, ys, eps=eps, num_queries=square_queries, p_init=SQUARE_P_INIT,
          seed=s, model=model, rescale_schedule=False, return_fooled=True),
  }


def autoattack_stages(model_fn: core.ModelFn, x, y, *, eps: float,
                      seed: tf.Tensor | None = None, num_steps: int = NUM_STEPS,
                      num_target_classes: int = NUM_TARGET_CLASSES,
                      square_queries: int = SQUARE_QUERIES,
                      model: keras.Model | None = None
                      ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """AutoAttack with the robustness left after each attack.

  Args:
    model_fn: x -> logits [B, K], inference mode; K >= num_target_classes + 1 and K >= 4.
    x: images [B, H, W, C] in [0, 1], static H, W, C.
    y: int labels [B].
    eps: L-inf radius in [0, 1].
    seed: optional stateless seed [2]; attack k draws from fold_in(seed, k).
    num_steps: APGD and FAB iterations (standard: 100); smaller only for tests.
    num_target_classes: APGD-T and FAB-T targets (standard: 9).
    square_queries: Square's budget (standard: 5000).
    model: the Keras model that model_fn runs, optional (see `stage_attacks`).

  Returns:
    (x_adv [B, H, W, C] (stop_gradient, in the ball and in [0, 1]), robust): robust maps
    'clean' and each name of `STAGES` to bool [B], correctly classified after that attack: not
    fooled by it or an earlier one (module docstring); robust['square'] is AutoAttack's result.
    x_adv is x where robust['square'] holds.
  """
  eps = core.check_eps(eps)
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.cast(y, tf.int32)
  seed = apgd_lib.default_seed(seed)

  def predict(images):
    return tf.argmax(model_fn(images), axis=-1, output_type=tf.int32)

  attacks = stage_attacks(model_fn, eps=eps, num_steps=num_steps,
                          num_target_classes=num_target_classes, square_queries=square_queries,
                          model=model)
  robust = tf.equal(predict(x), y)
  by_stage = {'clean': robust}
  x_adv = x
  for k, name in enumerate(STAGES):
    index = tf.where(robust)[:, 0]
    stage_seed = tf.random.experimental.stateless_fold_in(seed, k)

    def attack(index=index, name=name, stage_seed=stage_seed):
      xs, ys = tf.gather(x, index), tf.gather(y, index)
      candidate, fooled = attacks[name](xs, ys, stage_seed)
      return candidate, tf.logical_or(fooled, tf.not_equal(predict(candidate), ys))

    def nothing_left(index=index):
      return tf.gather(x, index), tf.zeros(tf.shape(index), tf.bool)

    candidate, fooled = tf.cond(tf.size(index) > 0, attack, nothing_left)
    rows = tf.boolean_mask(index, fooled)[:, None]
    x_adv = tf.tensor_scatter_nd_update(x_adv, rows, tf.boolean_mask(candidate, fooled))
    robust = tf.tensor_scatter_nd_update(robust, rows, tf.zeros(tf.shape(rows)[:1], tf.bool))
    by_stage[name] = robust
  return tf.stop_gradient(core.project(x_adv, x, eps)), by_stage


def autoattack(model_fn: core.ModelFn, x, y, *, eps: float,
               seed: tf.Tensor | None = None, **kwargs) -> tf.Tensor:
  """AutoAttack (standard version): adversarial images [B, H, W, C] (see `autoattack_stages`)."""
  return autoattack_stages(model_fn, x, y, eps=eps, seed=seed, **kwargs)[0]
