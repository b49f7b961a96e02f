"""Attention attacks: A^3 (paper Sec. 4.3, Eq. 11-13) and an adaptive attack on attention defenses.

They take a `feature_fn` (x -> (features, logits), inference mode; see
`aad_tf.gradcam.FeatureModel`) instead of a `model_fn`, and return `stop_gradient` images inside
the eps ball around x and inside [0, 1].

  a3                  the base objective (StepLL, Iter-StepLL or PGD) plus sigma times the L1
                      distance between the clean attention area Att(x) and the adversarial map.
  adaptive_attention  misclassify while keeping the Grad-CAM map close to the clean one.
"""

import tensorflow as tf

from aad_tf import gradcam as gradcam_lib
from aad_tf.attacks import core
from aad_tf.attacks.core import Objective


def attention_distance(feature_fn, x: tf.Tensor, labels: tf.Tensor, *,
                       kappa: str | float = 'mean', normalize: str = 'none') -> Objective:
  """x_adv -> ||Att(x) - g(x_adv)||_1 over the cells [B] (paper Eq. 11, before the minus sign).

  Att(x) is the binary clean attention area (a constant); g(x_adv) is the adversarial Grad-CAM for
  the true class. Map and distance are AAD's own (`gradcam.gradcam(..., normalize=)` and
  `gradcam.map_distance`, as in L_p, Eq. 9), so an attack and a defense with the same `normalize`
  speak about the same map. With 'none' the raw map is small beside a binary area (cells ~1e-3
  on MNIST LeNet) and the term moves little; 'max' puts the map on the area's [0, 1] scale.
  """
  clean_cam, _ = gradcam_lib.gradcam(feature_fn, x, labels, normalize=normalize)
  att = gradcam_lib.attention_area(clean_cam, kappa=kappa)

  def distance(x_adv):
    cam, _ = gradcam_lib.gradcam(feature_fn, x_adv, labels, normalize=normalize)
    return gradcam_lib.map_distance(att, cam)

  return distance


def a3(feature_fn, x, y, *, base: str, eps: float, step_size: float | None = None,
       num_steps: int = 1, sigma: float = 10.0, kappa: str | float = 'mean',
       normalize: str = 'none', random_init: bool = False) -> tf.Tensor:
  """Attention-augmented attacks A^3 (paper Sec. 4.3, Eq. 11-13).

  The ascended objective is base_objective(x_adv) + sigma * ||Att(x) - g(x_adv)||_1 (the L1 sum over
  the cells, `attention_distance`):
  for base 'stepll'/'iter_stepll' base_objective = -CE(f(x_adv), y_LL) (paper Eq. 12-13), for
  'pgd' it is CE(f(x_adv), y). The attention map is taken for the true class y.

  Args:
    feature_fn: x -> (features, logits), inference mode.
    x, y: images [B, H, W, C] and int labels [B].
    base: 'stepll' (one step of size eps), 'iter_stepll' or 'pgd'.
    eps, step_size, num_steps: as for the base attack (step_size defaults to eps / num_steps).
    sigma: weight of the attention term (paper: 10).
    kappa: threshold of the clean attention area.
    normalize: scaling of the Grad-CAM maps (`gradcam.NORMALIZATIONS`), as in training.
    random_init: random start (PGD only).
  """
  if base not in ('stepll', 'iter_stepll', 'pgd'):
    raise ValueError(f"base must be 'stepll', 'iter_stepll' or 'pgd', got {base!r}.")
  eps = core.check_eps(eps)
  if base == 'stepll':
    step_size, num_steps = eps, 1
  elif step_size is None:
    step_size = eps / max(int(num_steps), 1)
  core.check_steps(step_size, num_steps)
  x = tf.convert_to_tensor(x)
  y = tf.cast(y, tf.int32)
  model_fn = lambda images: feature_fn(images)[1]
  if base == 'pgd':
    classify = core.loss_objective(model_fn, y, 'ce', targeted=False)
  else:
    classify = core.loss_objective(model_fn, core.least_likely(model_fn, x), 'ce',
                                   targeted=True)
  gradcam_lib.check_normalize(normalize)
  attention = attention_distance(feature_fn, x, y, kappa=kappa, normalize=normalize)
  objective = lambda x_adv: classify(x_adv) + sigma * attention(x_adv)
  start = core.random_start(x, eps) if (random_init and base == 'pgd') else x
  return tf.stop_gradient(core.iterate(objective, x, start, eps=eps, step_size=step_size,
                                  num_steps=num_steps))


# ---------------------------------------------------------------------------------------------
# Adaptive attack on attention-based defenses (added for the robustness evaluation).

def attention_shift(feature_fn, x: tf.Tensor, labels: tf.Tensor) -> Objective:
  """x_adv -> ||g(x_adv) - g(x)||_1 / ||g(x)||_1 [B]: relative L1 change of the Grad-CAM map.

  g is the raw Grad-CAM of the true class (the map AAD's preservation loss, paper Eq. 9, keeps
  close); dividing by the clean map's mass makes the value scale-free (0 = unchanged).
  """
  clean_cam = tf.stop_gradient(gradcam_lib.gradcam(feature_fn, x, labels)[0])
  mass = tf.reduce_sum(clean_cam, axis=[1, 2]) + 1e-12

  def shift(x_adv):
    cam, _ = gradcam_lib.gradcam(feature_fn, x_adv, labels)
    return tf.reduce_sum(tf.abs(cam - clean_cam), axis=[1, 2]) / mass

  return shift


def adaptive_attention(feature_fn, x, y, *, eps: float, step_size: float, num_steps: int,
                       weight: float = 1.0, random_init: bool = True,
                       seed: tf.Tensor | None = None) -> tf.Tensor:
  """Adaptive attack: misclassify while keeping the Grad-CAM map close to the clean one.

  A defense that preserves attention (AAD) could look robust to a monitor of the attention map
  if attacks always moved the map; this attack looks for adversarial examples whose map barely
  moves. It takes signed-gradient steps (projected, as PGD) on

      min(m(x_adv), 0) - weight * ||g(x_adv) - g(x)||_1 / ||g(x)||_1,
      m = max_{j != y} z_j - z_y   (the CW margin, > 0 iff misclassified),

  so the margin drives the iterate across the decision boundary and, once across, only the
  attention term acts (the cap at 0 is the CW confidence 0). Per example it returns the
  misclassified iterate with the smallest attention shift, else the last iterate.

  Args:
    feature_fn: x -> (features, logits), inference mode.
    x, y: images [B, H, W, C] in [0, 1] and int labels [B].
    eps: L-inf radius in [0, 1].
    step_size, num_steps: signed-gradient steps.
    weight: weight of the relative attention shift (1: moving the whole map's mass costs as much
      as one logit of margin).
    random_init: start from a uniform random point of the ball.
    seed: optional stateless seed [2] for the random start.

  Returns:
    Adversarial images [B, H, W, C] (stop_gradient).
  """
  eps = core.check_eps(eps)
  core.check_steps(step_size, num_steps)
  if float(weight) < 0:
    raise ValueError(f'weight must be >= 0, got {weight}.')
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.cast(y, tf.int32)
  shift = attention_shift(feature_fn, x, y)

  def evaluate(x_adv):
    with tf.GradientTape() as tape:
      tape.watch(x_adv)
      _, logits = feature_fn(x_adv)
      margin = core.cw_margin(logits, y)
      distance = shift(x_adv)
      total = tf.reduce_sum(tf.minimum(margin, 0.0) - weight * distance)
    grad = tape.gradient(total, x_adv)
    return (tf.zeros_like(x_adv) if grad is None else grad), margin > 0, distance

  start = core.random_start(x, eps, seed) if random_init else x
  grad, fooled, distance = evaluate(start)
  best = start
  best_distance = tf.where(fooled, distance, tf.fill(tf.shape(distance), float('inf')))

  def body(i, x_adv, grad, best, best_distance):
    x_adv = core.project(x_adv + step_size * tf.sign(grad), x, eps)
    grad, fooled, distance = evaluate(x_adv)
    better = tf.logical_and(fooled, distance < best_distance)
    return (i + 1, x_adv, grad, tf.where(better[:, None, None, None], x_adv, best),
            tf.where(better, distance, best_distance))

  _, x_last, _, best, best_distance = tf.while_loop(
      lambda i, *_: i < num_steps, body, (tf.constant(0), start, grad, best, best_distance))
  found = tf.math.is_finite(best_distance)
  return tf.stop_gradient(tf.where(found[:, None, None, None], best, x_last))
