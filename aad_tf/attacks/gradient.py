"""Gradient attacks FGSM, StepLL, Iter-StepLL, PGD, CW-L-inf: functions of (model_fn, x, y, *, eps).

Every attack returns `stop_gradient` images inside the eps ball around x and inside [0, 1].

  fgsm         Goodfellow et al. 2015: one signed-gradient step of size eps on cross-entropy.
  stepll       Kurakin et al. 2017 / paper Eq. 4: one step towards the least-likely class.
  iter_stepll  Kurakin et al. 2017: iterated StepLL, projected.
  pgd          Madry et al. 2018: random start, signed steps, projection, restarts.
  cw_linf      PGD on the Carlini-Wagner margin max_{j!=y} z_j - z_y (Madry et al.'s CW-L-inf).
"""

from typing import Callable

import tensorflow as tf

from aad_tf.attacks import core
from aad_tf.attacks.core import ModelFn


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


def fgsm(model_fn: ModelFn, x, y, *, eps: float) -> tf.Tensor:
  """FGSM: x + eps * sign(grad_x CE(f(x), y))."""
  eps = core.check_eps(eps)
  x = tf.convert_to_tensor(x)
  grad = core.input_gradient(core.loss_objective(model_fn, y, 'ce', False), x)
  return tf.stop_gradient(core.project(x + eps * tf.sign(grad), x, eps))


def stepll(model_fn: ModelFn, x, y=None, *, eps: float) -> tf.Tensor:
  """StepLL (paper Eq. 4): x - eps * sign(grad_x CE(f(x), y_LL)). `y` is unused."""
  del y
  return iter_stepll(model_fn, x, eps=eps, step_size=eps, num_steps=1)


def iter_stepll(model_fn: ModelFn, x, y=None, *, eps: float, step_size: float,
                num_steps: int) -> tf.Tensor:
  """Iterative least-likely-class attack; y_LL is fixed from the clean prediction."""
  del y
  eps = core.check_eps(eps)
  core.check_steps(step_size, num_steps)
  x = tf.convert_to_tensor(x)
  target = core.least_likely(model_fn, x)
  objective = core.loss_objective(model_fn, target, 'ce', targeted=True)
  return tf.stop_gradient(core.iterate(objective, x, x, eps=eps, step_size=step_size,
                                  num_steps=num_steps))


def pgd(model_fn: ModelFn, x, y, *, eps: float, step_size: float, num_steps: int,
        loss: str = 'ce', random_init: bool = True, num_restarts: int = 1,
        targeted: bool = False, seed: tf.Tensor | None = None) -> tf.Tensor:
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
  eps = core.check_eps(eps)
  core.check_steps(step_size, num_steps)
  x = tf.convert_to_tensor(x)
  y = tf.cast(y, tf.int32)
  objective = core.loss_objective(model_fn, y, loss, targeted)

  def run(restart):
    if random_init:
      restart_seed = None if seed is None else tf.cast(seed, tf.int32) + tf.stack([0, restart])
      start = core.random_start(x, eps, restart_seed)
    else:
      start = x
    return core.iterate(objective, x, start, eps=eps, step_size=step_size, num_steps=num_steps)

  restarts = num_restarts if random_init else 1
  return tf.stop_gradient(_with_restarts(model_fn, x, y, run, restarts, targeted))


def cw_linf(model_fn: ModelFn, x, y, *, eps: float, step_size: float, num_steps: int,
            **kwargs) -> tf.Tensor:
  """CW-L-inf: PGD on the Carlini-Wagner margin loss (as in Madry et al.'s CW evaluation)."""
  return pgd(model_fn, x, y, eps=eps, step_size=step_size, num_steps=num_steps, loss='cw',
             **kwargs)
