"""What every L-inf attack is built from: checks, projection, random start, objectives, the loop.

`model_fn` maps images [B, H, W, C] in [0, 1] to logits [B, C] and should run the model in
inference mode (`lambda x: model(x, training=False)`); an `Objective` maps x_adv to a per-example
value [B] to ascend. `iterate` is a `tf.while_loop`, so an attack traces once inside a
`tf.function` whatever its step count.
"""

from typing import Callable

import tensorflow as tf

from aad_tf import gradcam as gradcam_lib
from aad_tf.attacks import conv_gradient

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


def random_start(x: tf.Tensor, eps: float, seed: tf.Tensor | None = None) -> tf.Tensor:
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
  with conv_gradient.fast_input_gradients():
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


def loss_objective(model_fn: ModelFn, labels: tf.Tensor, loss: str,
                   targeted: bool) -> Objective:
  """x_adv -> loss(f(x_adv), labels) [B], negated when targeted (to ascend either way)."""
  if loss not in LOSSES:
    raise ValueError(f'loss must be one of {sorted(LOSSES)}, got {loss!r}.')
  fn = LOSSES[loss]
  sign = -1.0 if targeted else 1.0
  return lambda x_adv: sign * fn(model_fn(x_adv), labels)


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


