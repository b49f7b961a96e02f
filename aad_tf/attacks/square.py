"""Square Attack, L-inf (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), native TF2.

A gradient-free, score-based random search: it only queries logits, so gradient masking cannot
stop it. Each iteration draws one square window of side s (its corner uniform over the image)
and one random sign per channel, sets the perturbation of every example not yet fooled to
+-eps inside that window, and keeps each example's proposal if it lowers its margin loss
z_y - max_{j != y} z_j. This is AutoAttack's version (its `square.py`): one window and one sign
for the whole batch per iteration, no redraw of proposals that change nothing (the authors'
first code drew a window per example and redrew those).

  * start: vertical stripes, delta[b, :, w, c] = +-eps (one sign per column and channel);
  * s = round(sqrt(p * H * W)), clipped to [1, min(H, W) - 1], where the fraction of changed
    pixels p follows the authors' piecewise-constant schedule: p_init halved after 10, 50, 200,
    500, 1000, 2000, 4000, 6000 and 8000 of 10000 iterations (rescaled to the query budget);
  * the window's corner is uniform over [0, H - s - 1] x [0, W - s - 1], as AutoAttack's
    `random_int(0, h - s)` draws it (it truncates low + (high - low) * U[0, 1)): the window
    never covers the last row or column;
  * an example stops once it is misclassified (margin <= 0) and is then no longer queried.

The budget counts as in the reference (`n_queries`): `num_queries` iterations after the start,
so at most 1 + num_queries queries per example. p_init defaults to 0.8, AutoAttack's value for
its standard L-inf evaluation.

Because the window is shared, a query changes every image in the same few pixels; given the
Keras model, `windowed` recomputes only the activations those pixels reach (on the MNIST LeNet
a 1-3 pixel query in the middle of the image costs 40-60 % of a forward pass), with results
equal to float rounding.
"""

import keras
import tensorflow as tf

from aad_tf.attacks import core
from aad_tf.attacks import windowed as windowed_lib

# Iterations (out of 10000) after which p halves: the authors' schedule.
P_SCHEDULE_BOUNDARIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def margin_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """z_y - max_{j != y} z_j [B]; <= 0 iff the example is misclassified (to minimise)."""
  return -core.cw_margin(logits, labels)


def p_schedule(iteration, num_queries: int, p_init: float, rescale: bool = True) -> tf.Tensor:
  """The fraction of pixels p changed at `iteration` (scalar tensor).

  With `rescale` the schedule's 10000 iterations are stretched to `num_queries` (the authors'
  Square code); without, iterations count as they are (AutoAttack builds its Square with
  `resc_schedule=False`: at 5000 queries the last halvings are never reached).
  """
  scaled = tf.cast(iteration, tf.float32)
  if rescale:
    scaled = tf.floor(scaled / float(num_queries) * 10000.0)
  halvings = tf.add_n([tf.cast(scaled > b, tf.float32) for b in P_SCHEDULE_BOUNDARIES])
  return p_init / tf.pow(2.0, halvings)


def window_side(p: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """s = round(sqrt(p * H * W)) clipped to [1, min(H, W) - 1] (int32 scalar)."""
  s = tf.cast(tf.round(tf.sqrt(p * float(height * width))), tf.int32)
  return tf.clip_by_value(s, 1, max(min(height, width) - 1, 1))


def square_linf(model_fn: core.ModelFn, x, y, *, eps: float, num_queries: int = 1000,
                p_init: float = 0.8, seed: tf.Tensor | None = None,
                model: keras.Model | None = None, rescale_schedule: bool = True,
                return_fooled: bool = False):
  """Untargeted Square Attack under an L-inf bound.

  Args:
    model_fn: x -> logits [B, K]; only its values are used (no gradients).
    x: images [B, H, W, C] in [0, 1], static H, W, C.
    y: int labels [B].
    eps: L-inf radius in [0, 1].
    num_queries: iterations after the stripes start (>= 0; the reference's n_queries): at most
      1 + num_queries queries per example.
    p_init: initial fraction of pixels changed per iteration, in (0, 1].
    seed: optional stateless seed [2]; the start draws with it, iteration i with
      fold_in(seed, i + 1).
    model: the Keras model that model_fn runs, optional: where `windowed.plan` supports it,
      each query recomputes only what the changed window reaches (same results to float
      rounding, fewer operations; model_fn is then called only to re-check examples a query
      calls misclassified, calls outside the query budget); else every query is one forward
      pass of model_fn.
    rescale_schedule: stretch p's schedule to num_queries (see `p_schedule`; AutoAttack: no).
    return_fooled: also return which examples the attack found misclassified.

  Returns:
    Adversarial images [B, H, W, C] (stop_gradient), in the ball and in [0, 1]; with
    `return_fooled`, (images, fooled bool [B]): margin <= 0 by model_fn's own logits (windowed
    logits only propose: every margin that decides is model_fn's).
  """
  eps = core.check_eps(eps)
  if isinstance(num_queries, bool) or int(num_queries) != num_queries or num_queries < 0:
    raise ValueError(f'num_queries must be a non-negative integer, got {num_queries}.')
  if not 0.0 < p_init <= 1.0:
    raise ValueError(f'p_init must be in (0, 1], got {p_init}.')
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.cast(y, tf.int32)
  height, width, channels = x.shape[1:]
  if None in (height, width, channels):
    raise ValueError(f'square_linf needs static image dimensions, got {x.shape}.')
  if seed is None:
    seed = tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int32)
  seed = tf.cast(seed, tf.int32)
  batch = tf.shape(x)[0]
  windowed = windowed_lib.plan(model_fn, model, (height, width, channels))

  def signs(shape, s):
    return eps * (2.0 * tf.cast(tf.random.stateless_uniform(shape, s, 0, 2, tf.int32),
                                tf.float32) - 1.0)

  def margins(logits, rows):
    return margin_loss(logits, tf.gather(y, rows))

  def exact_margins(logits, images):
    # The windowed plan's logits equal model_fn's to rounding only: margins that decide which
    # examples are fooled come from model_fn itself.
    return margin_loss(model_fn(images) if windowed.incremental else logits, y)

  stripes = signs(tf.stack([batch, 1, width, channels]), seed)
  logits, state = windowed.full(tf.clip_by_value(x + stripes, 0.0, 1.0))
  margin_best = exact_margins(logits, state[0])

  def body(i, margin_best, state):
    active = tf.where(margin_best > 0)[:, 0]  # only examples not yet fooled are queried
    side = window_side(p_schedule(i, num_queries, p_init, rescale_schedule), height, width)
    seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, i + 1), 3)
    # One window and one sign per channel for all examples, as in AutoAttack's Square; the
    # corner in [0, H - s - 1] (maxval is exclusive), as the reference draws it.
    corner = (tf.random.stateless_uniform([], seeds[0], 0, height - side, tf.int32),
              tf.random.stateless_uniform([], seeds[1], 0, width - side, tf.int32))
    x_window = tf.gather(tf.slice(x, tf.stack([0, corner[0], corner[1], 0]),
                                  tf.stack([-1, side, side, -1])), active)
    # x_best + 2 eps sign, clipped to the ball and to [0, 1], is x + eps sign clipped.
    new = tf.clip_by_value(x_window + signs([channels], seeds[2]), 0.0, 1.0)
    logits, update = windowed.query(state, active, corner, new)
    margin_new = margins(logits, active)
    if windowed.incremental:
      # Windowed logits equal the model's to rounding only: an example is called fooled (and
      # no longer attacked) only by the model itself.
      suspect = tf.where(margin_new <= 0)[:, 0]

      def exact():
        rows = tf.gather(active, suspect)
        images = windowed_lib.patched(state[0], rows, corner, tf.gather(new, suspect))
        return tf.tensor_scatter_nd_update(margin_new, suspect[:, None],
                                           margins(model_fn(images), rows))
      margin_new = tf.cond(tf.size(suspect) > 0, exact, lambda: margin_new)
    margin_active = tf.gather(margin_best, active)
    improved = margin_new < margin_active
    state = tf.cond(tf.reduce_any(improved),
                    lambda: windowed.commit(state, active, improved, update), lambda: state)
    margin_best = tf.tensor_scatter_nd_update(margin_best, active[:, None],
                                              tf.minimum(margin_new, margin_active))
    if windowed.accumulates:
      def refresh():  # exact values again; examples already fooled keep their margin
        logits, fresh = windowed.full(state[0])
        return tf.where(margin_best > 0, exact_margins(logits, state[0]), margin_best), fresh
      margin_best, state = tf.cond((i + 1) % windowed_lib.REFRESH_EVERY == 0, refresh,
                                   lambda: (margin_best, state))
    return i + 1, margin_best, state

  def cond(i, margin_best, state):
    del state
    return tf.logical_and(i < num_queries, tf.reduce_any(margin_best > 0))

  _, margin_best, state = tf.while_loop(cond, body, (tf.constant(0), margin_best, state))
  # The clip to [0, 1] and the +-eps construction keep x_best in the ball; project anyway so that
  # float rounding can never leave it.
  x_adv = tf.stop_gradient(core.project(state[0], x, eps))
  return (x_adv, margin_best <= 0) if return_fooled else x_adv
