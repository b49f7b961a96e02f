"""L-inf attacks as pure functions of `(model_fn, x, y, *, eps, ...)`.

`model_fn` maps images [B, H, W, C] in [0, 1] to logits [B, C] and should run the model in
inference mode (`lambda x: model(x, training=False)`). Attention-augmented attacks (A^3, paper
Sec. 4.3) take a `feature_fn` (x -> (features, logits), see `aad_tf.gradcam.FeatureModel`) instead.

Every attack returns `stop_gradient` images inside the eps ball around x and inside [0, 1]. Loops
are `tf.while_loop`s, so an attack traces once inside a `tf.function` whatever its step count.

Attacks:
  fgsm         Goodfellow et al. 2015: one signed-gradient step of size eps on cross-entropy.
  stepll       Kurakin et al. 2017 / paper Eq. 4: one step towards the least-likely class.
  iter_stepll  Kurakin et al. 2017: iterated StepLL, projected.
  pgd          Madry et al. 2018: random start, signed steps, projection, restarts.
  cw_linf      PGD on the Carlini-Wagner margin max_{j!=y} z_j - z_y (Madry et al.'s CW-L-inf).
  *_a3         the paper's A^3 (Eq. 11-13): the base objective plus sigma times the L1 distance
               between the clean attention area Att(x) and the adversarial map g(x_adv).
"""

from typing import Callable, Optional, Union

import tensorflow as tf

from aad_tf import gradcam as gradcam_lib

ModelFn = Callable[[tf.Tensor], tf.Tensor]
Objective = Callable[[tf.Tensor], tf.Tensor]  # x_adv [B,H,W,C] -> per-example value [B] to ascend


# ---------------------------------------------------------------------------------------------
# Checks and small shared parts.

def check_eps(eps, name: str = 'eps') -> float:
  """Validates a Python eps in [0, 1]; a tensor (e.g. a warm-up schedule) passes through."""
  if tf.is_tensor(eps):
    return eps
  eps = float(eps)
  if not 0.0 <= eps <= 1.0:
    raise ValueError(f'{name} must be in [0, 1] (images are in [0, 1]), got {eps}.')
  return eps


def check_steps(step_size, num_steps) -> None:
  """Validates Python numbers; tensors (e.g. a step count fed to a tf.function) pass through."""
  if tf.is_tensor(step_size) or tf.is_tensor(num_steps):
    return
  if float(step_size) < 0:
    raise ValueError(f'step_size must be >= 0, got {step_size}.')
  if int(num_steps) < 0 or int(num_steps) != num_steps:
    raise ValueError(f'num_steps must be a non-negative integer, got {num_steps}.')


def project(x_adv: tf.Tensor, x: tf.Tensor, eps: float) -> tf.Tensor:
  """Clips x_adv into the L-inf ball of radius eps around x and into [0, 1]."""
  return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)


def random_start(x: tf.Tensor, eps: float, seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """A uniform random point of the eps ball around x, clipped to [0, 1]."""
  if seed is None:
    noise = tf.random.uniform(tf.shape(x), -eps, eps, dtype=x.dtype)
  else:
    noise = tf.random.stateless_uniform(tf.shape(x), seed, -eps, eps, dtype=x.dtype)
  return project(x + noise, x, eps)


def least_likely(model_fn: ModelFn, x: tf.Tensor) -> tf.Tensor:
  """The least-likely class y_LL [B] of the model on x."""
  return tf.argmin(model_fn(x), axis=-1, output_type=tf.int32)


def input_gradient(objective: Objective, x: tf.Tensor) -> tf.Tensor:
  """d sum(objective(x)) / dx."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    value = tf.reduce_sum(objective(x))
  grad = tape.gradient(value, x)
  return tf.zeros_like(x) if grad is None else grad


# ---------------------------------------------------------------------------------------------
# Objectives (per example, to ascend).

def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32),
                                                        gradcam_lib.full_precision(logits))


def cw_margin(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """max_{j != y} z_j - z_y: positive iff the example is misclassified."""
  logits = gradcam_lib.full_precision(logits)
  onehot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
  correct = tf.reduce_sum(onehot * logits, axis=-1)
  wrong = tf.reduce_max(logits - 1e9 * onehot, axis=-1)
  return wrong - correct


LOSSES = {'ce': cross_entropy, 'cw': cw_margin}


def _objective(model_fn: ModelFn, labels: tf.Tensor, loss: str, targeted: bool) -> Objective:
  if loss not in LOSSES:
    raise ValueError(f'loss must be one of {sorted(LOSSES)}, got {loss!r}.')
  fn = LOSSES[loss]
  sign = -1.0 if targeted else 1.0
  return lambda x_adv: sign * fn(model_fn(x_adv), labels)


def attention_distance(feature_fn, x: tf.Tensor, labels: tf.Tensor, *,
                       kappa: Union[str, float] = 'mean', normalize: str = 'none') -> Objective:
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


# ---------------------------------------------------------------------------------------------
# The iterative core.

def iterate(objective: Objective, x: tf.Tensor, x_init: tf.Tensor, *, eps: float,
            step_size: float, num_steps: int) -> tf.Tensor:
  """num_steps of x <- Proj(x + step_size * sign(grad objective)) from x_init (a tf.while_loop)."""
  def body(i, x_adv):
    grad = input_gradient(objective, x_adv)
    return i + 1, project(x_adv + step_size * tf.sign(grad), x, eps)

  _, x_adv = tf.while_loop(lambda i, _: i < num_steps, body,
                           (tf.constant(0), x_init))
  return x_adv


def _with_restarts(model_fn: ModelFn, x, y, run: Callable[[tf.Tensor], tf.Tensor],
                   num_restarts: int, targeted: bool) -> tf.Tensor:
  """Runs `run(restart_index)` num_restarts times; keeps, per example, the first success."""
  if int(num_restarts) < 1:
    raise ValueError(f'num_restarts must be >= 1, got {num_restarts}.')
  best = run(tf.constant(0))
  if num_restarts == 1:
    return best

  def fooled(x_adv):
    pred = tf.argmax(model_fn(x_adv), axis=-1, output_type=tf.int32)
    return tf.equal(pred, y) if targeted else tf.not_equal(pred, y)

  def body(r, best):
    candidate = run(r)
    keep = fooled(best)
    take = tf.logical_and(tf.logical_not(keep), fooled(candidate))
    return r + 1, tf.where(take[:, None, None, None], candidate, best)

  _, best = tf.while_loop(lambda r, _: r < num_restarts, body, (tf.constant(1), best))
  return best


# ---------------------------------------------------------------------------------------------
# Public attacks.

def fgsm(model_fn: ModelFn, x, y, *, eps: float) -> tf.Tensor:
  """FGSM: x + eps * sign(grad_x CE(f(x), y))."""
  eps = check_eps(eps)
  x = tf.convert_to_tensor(x)
  grad = input_gradient(_objective(model_fn, y, 'ce', False), x)
  return tf.stop_gradient(project(x + eps * tf.sign(grad), x, eps))


def stepll(model_fn: ModelFn, x, y=None, *, eps: float) -> tf.Tensor:
  """StepLL (paper Eq. 4): x - eps * sign(grad_x CE(f(x), y_LL)). `y` is unused."""
  del y
  return iter_stepll(model_fn, x, eps=eps, step_size=eps, num_steps=1)


def iter_stepll(model_fn: ModelFn, x, y=None, *, eps: float, step_size: float,
                num_steps: int) -> tf.Tensor:
  """Iterative least-likely-class attack; y_LL is fixed from the clean prediction."""
  del y
  eps = check_eps(eps)
  check_steps(step_size, num_steps)
  x = tf.convert_to_tensor(x)
  target = least_likely(model_fn, x)
  objective = _objective(model_fn, target, 'ce', targeted=True)
  return tf.stop_gradient(iterate(objective, x, x, eps=eps, step_size=step_size,
                                  num_steps=num_steps))


def pgd(model_fn: ModelFn, x, y, *, eps: float, step_size: float, num_steps: int,
        loss: str = 'ce', random_init: bool = True, num_restarts: int = 1,
        targeted: bool = False, seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Projected gradient descent (Madry et al. 2018) under an L-inf bound.

  Args:
    model_fn: x -> logits, inference mode.
    x: images [B, H, W, C] in [0, 1].
    y: int labels [B] (the target class if targeted).
    eps: L-inf radius in [0, 1].
    step_size: size of each signed step.
    num_steps: number of steps.
    loss: 'ce' (cross-entropy) or 'cw' (Carlini-Wagner margin).
    random_init: start from a uniform random point of the ball.
    num_restarts: independent random restarts; per example the first successful one is kept.
    targeted: descend the loss towards y instead of ascending it away from y.
    seed: optional stateless seed [2] for the random starts (restart r uses seed + [0, r]).

  Returns:
    Adversarial images [B, H, W, C].
  """
  eps = check_eps(eps)
  check_steps(step_size, num_steps)
  x = tf.convert_to_tensor(x)
  y = tf.cast(y, tf.int32)
  objective = _objective(model_fn, y, loss, targeted)

  def run(restart):
    if random_init:
      restart_seed = None if seed is None else tf.cast(seed, tf.int32) + tf.stack([0, restart])
      start = random_start(x, eps, restart_seed)
    else:
      start = x
    return iterate(objective, x, start, eps=eps, step_size=step_size, num_steps=num_steps)

  restarts = num_restarts if random_init else 1
  return tf.stop_gradient(_with_restarts(model_fn, x, y, run, restarts, targeted))


def cw_linf(model_fn: ModelFn, x, y, *, eps: float, step_size: float, num_steps: int,
            **kwargs) -> tf.Tensor:
  """CW-L-inf: PGD on the Carlini-Wagner margin loss (as in Madry et al.'s CW evaluation)."""
  return pgd(model_fn, x, y, eps=eps, step_size=step_size, num_steps=num_steps, loss='cw',
             **kwargs)


def a3(feature_fn, x, y, *, base: str, eps: float, step_size: Optional[float] = None,
       num_steps: int = 1, sigma: float = 10.0, kappa: Union[str, float] = 'mean',
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
  eps = check_eps(eps)
  if base == 'stepll':
    step_size, num_steps = eps, 1
  elif step_size is None:
    step_size = eps / max(int(num_steps), 1)
  check_steps(step_size, num_steps)
  x = tf.convert_to_tensor(x)
  y = tf.cast(y, tf.int32)
  model_fn = lambda images: feature_fn(images)[1]
  if base == 'pgd':
    classify = _objective(model_fn, y, 'ce', targeted=False)
  else:
    classify = _objective(model_fn, least_likely(model_fn, x), 'ce', targeted=True)
  gradcam_lib.check_normalize(normalize)
  attention = attention_distance(feature_fn, x, y, kappa=kappa, normalize=normalize)
  objective = lambda x_adv: classify(x_adv) + sigma * attention(x_adv)
  start = random_start(x, eps) if (random_init and base == 'pgd') else x
  return tf.stop_gradient(iterate(objective, x, start, eps=eps, step_size=step_size,
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
                       seed: Optional[tf.Tensor] = None) -> tf.Tensor:
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
  eps = check_eps(eps)
  check_steps(step_size, num_steps)
  if float(weight) < 0:
    raise ValueError(f'weight must be >= 0, got {weight}.')
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.cast(y, tf.int32)
  shift = attention_shift(feature_fn, x, y)

  def evaluate(x_adv):
    with tf.GradientTape() as tape:
      tape.watch(x_adv)
      _, logits = feature_fn(x_adv)
      margin = cw_margin(logits, y)
      distance = shift(x_adv)
      total = tf.reduce_sum(tf.minimum(margin, 0.0) - weight * distance)
    grad = tape.gradient(total, x_adv)
    return (tf.zeros_like(x_adv) if grad is None else grad), margin > 0, distance

  start = random_start(x, eps, seed) if random_init else x
  grad, fooled, distance = evaluate(start)
  best = start
  best_distance = tf.where(fooled, distance, tf.fill(tf.shape(distance), float('inf')))

  def body(i, x_adv, grad, best, best_distance):
    x_adv = project(x_adv + step_size * tf.sign(grad), x, eps)
    grad, fooled, distance = evaluate(x_adv)
    better = tf.logical_and(fooled, distance < best_distance)
    return (i + 1, x_adv, grad, tf.where(better[:, None, None, None], x_adv, best),
            tf.where(better, distance, best_distance))

  _, x_last, _, best, best_distance = tf.while_loop(
      lambda i, *_: i < num_steps, body, (tf.constant(0), start, grad, best, best_distance))
  found = tf.math.is_finite(best_distance)
  return tf.stop_gradient(tf.where(found[:, None, None, None], best, x_last))
