"""The inner attacks of base defenses' training: single-step (StepLL / FGSM, R+Step-LL) and TRADES.

  single_step    Kurakin et al. 2017's StepLL (paper Eq. 4) or FGSM, optionally after Tramer et
                 al. 2018's random step x' = x + a * sign(N(0, I)) (R+Step-LL).
  trades_attack  Zhang et al. 2019's inner maximisation: PGD on KL(f(x) || f(x_adv)) from
                 x + 0.001 * N(0, I), no labels.
  kl_divergence  that KL per example, also TRADES' robust loss term.

Both attacks take an optional stateless seed [2], so a training step's draws are a function of
(seed, step, replica) and repeat across resumes.
"""

import tensorflow as tf

from aad_tf.attacks import core
from aad_tf.attacks import gradient
from aad_tf.attacks.core import ModelFn

SINGLE_STEP_ATTACKS = ('stepll', 'fgsm')
TRADES_INIT_STD = 0.001  # Zhang et al.'s start: x + 0.001 * N(0, I)


def single_step(model_fn: ModelFn, x: tf.Tensor, y: tf.Tensor, *, eps: float,
                method: str = 'stepll', random_step: float = 0.0,
                seed: tf.Tensor | None = None) -> tf.Tensor:
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
  eps = core.check_eps(eps)
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
    start = core.project(x + alpha * tf.sign(noise), x, eps)
  if method == 'stepll':
    x_adv = gradient.stepll(model_fn, start, eps=eps - alpha)
  else:
    x_adv = gradient.fgsm(model_fn, start, y, eps=eps - alpha)
  return tf.stop_gradient(core.project(x_adv, x, eps))


def kl_divergence(clean_logits: tf.Tensor, adv_logits: tf.Tensor) -> tf.Tensor:
  """KL(softmax(clean) || softmax(adv)) per example [B]: TRADES' robust term.

  Equals PyTorch's KLDivLoss(log_softmax(adv), softmax(clean)) summed over classes, as in Zhang et
  al.'s code; computed from log-softmaxes so it stays finite for saturated probabilities.
  """
  clean = tf.cast(clean_logits, tf.float32)
  adv = tf.cast(adv_logits, tf.float32)
  log_p = tf.nn.log_softmax(clean)
  return tf.reduce_sum(tf.exp(log_p) * (log_p - tf.nn.log_softmax(adv)), axis=-1)


def trades_attack(model_fn: ModelFn, x: tf.Tensor, *, eps: float, step_size: float,
                  num_steps: int, seed: tf.Tensor | None = None) -> tf.Tensor:
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
  eps = core.check_eps(eps)
  core.check_steps(step_size, num_steps)
  x = tf.convert_to_tensor(x)
  clean_logits = tf.stop_gradient(model_fn(x))
  objective = lambda x_adv: kl_divergence(clean_logits, model_fn(x_adv))
  if seed is None:
    noise = tf.random.normal(tf.shape(x), stddev=TRADES_INIT_STD, dtype=x.dtype)
  else:
    noise = tf.random.stateless_normal(tf.shape(x), seed, stddev=TRADES_INIT_STD, dtype=x.dtype)
  start = core.project(x + noise, x, eps)
  return tf.stop_gradient(core.iterate(objective, x, start, eps=eps, step_size=step_size,
                                          num_steps=num_steps))


def check_random_step(random_step: float) -> None:
  """Validates R+Step-LL's random step a / eps: a fraction in [0, 1)."""
  if not 0.0 <= float(random_step) < 1.0:
    raise ValueError(f'stepll_random_step is a fraction of eps in [0, 1), got {random_step}.')
