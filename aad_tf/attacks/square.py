"""Square Attack, L-inf (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), native TF2.

A gradient-free, score-based random search: it only queries logits, so gradient masking cannot
stop it. Each iteration proposes, for every example not yet fooled, a square window of side s
placed uniformly at random in which the perturbation is reset to +-eps (one random sign per
channel), and keeps the proposal if it lowers the margin loss z_y - max_{j != y} z_j.

  * start: vertical stripes, delta[b, :, w, c] = +-eps (one sign per column and channel);
  * s = round(sqrt(p * H * W)), clipped to [1, min(H, W) - 1], where the fraction of changed
    pixels p follows the authors' piecewise-constant schedule: p_init halved after 10, 50, 200,
    500, 1000, 2000, 4000, 6000 and 8000 of 10000 iterations (rescaled to the query budget);
  * a proposal that would leave the window unchanged is redrawn (as in the authors' code);
  * an example stops once it is misclassified (margin <= 0) and is then no longer queried.

The budget is counted in queries per example: the start costs one, each iteration one more.
p_init defaults to 0.8, AutoAttack's value for its standard L-inf evaluation.
"""

import tensorflow as tf

from aad_tf.attacks import core

# Iterations (out of 10000) after which p halves: the authors' schedule.
P_SCHEDULE_BOUNDARIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
MAX_REDRAWS = 10


def margin_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """z_y - max_{j != y} z_j [B]; <= 0 iff the example is misclassified (to minimise)."""
  return -core.cw_margin(logits, labels)


def p_schedule(iteration, num_queries: int, p_init: float) -> tf.Tensor:
  """The fraction of pixels p changed at `iteration` (scalar tensor)."""
  scaled = tf.cast(iteration, tf.float32) / float(num_queries) * 10000.0
  scaled = tf.floor(scaled)
  halvings = tf.add_n([tf.cast(scaled > b, tf.float32) for b in P_SCHEDULE_BOUNDARIES])
  return p_init / tf.pow(2.0, halvings)


def window_side(p: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """s = round(sqrt(p * H * W)) clipped to [1, min(H, W) - 1] (int32 scalar)."""
  s = tf.cast(tf.round(tf.sqrt(p * float(height * width))), tf.int32)
  return tf.clip_by_value(s, 1, max(min(height, width) - 1, 1))


def _window_mask(corner_h, corner_w, side, height, width):
  """[B, H, W, 1] float mask of the windows [h0, h0 + s) x [w0, w0 + s)."""
  rows = tf.range(height)[None, :]
  cols = tf.range(width)[None, :]
  in_rows = tf.logical_and(rows >= corner_h[:, None], rows < corner_h[:, None] + side)
  in_cols = tf.logical_and(cols >= corner_w[:, None], cols < corner_w[:, None] + side)
  mask = tf.logical_and(in_rows[:, :, None], in_cols[:, None, :])
  return tf.cast(mask, tf.float32)[..., None]


def square_linf(model_fn: core.ModelFn, x, y, *, eps: float, num_queries: int = 1000,
                p_init: float = 0.8, seed: tf.Tensor | None = None) -> tf.Tensor:
  """Untargeted Square Attack under an L-inf bound.

  Args:
    model_fn: x -> logits [B, K]; only its values are used (no gradients).
    x: images [B, H, W, C] in [0, 1], static H, W, C.
    y: int labels [B].
    eps: L-inf radius in [0, 1].
    num_queries: query budget per example (>= 1).
    p_init: initial fraction of pixels changed per iteration, in (0, 1].
    seed: optional stateless seed [2]; iteration i draws with fold_in(seed, i).

  Returns:
    Adversarial images [B, H, W, C] (stop_gradient), in the ball and in [0, 1].
  """
  eps = core.check_eps(eps)
  if int(num_queries) != num_queries or num_queries < 1:
    raise ValueError(f'num_queries must be a positive integer, got {num_queries}.')
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

  def signs(shape, s):
    return eps * (2.0 * tf.cast(tf.random.stateless_uniform(shape, s, 0, 2, tf.int32),
                                tf.float32) - 1.0)

  stripes = signs(tf.stack([batch, 1, width, channels]), seed)
  x_best = tf.clip_by_value(x + stripes, 0.0, 1.0)
  margin_best = margin_loss(model_fn(x_best), y)

  def body(i, x_best, margin_best):
    active = tf.where(margin_best > 0)[:, 0]  # only examples not yet fooled are queried
    xa = tf.gather(x, active)
    xa_best = tf.gather(x_best, active)
    delta = xa_best - xa
    n = tf.shape(active)[0]
    side = window_side(p_schedule(i, num_queries, p_init), height, width)
    it_seed = tf.random.experimental.stateless_fold_in(seed, i + 1)
    seeds = tf.random.experimental.stateless_split(it_seed, 3)
    corner_h = tf.random.stateless_uniform([n], seeds[0], 0, height - side + 1, tf.int32)
    corner_w = tf.random.stateless_uniform([n], seeds[1], 0, width - side + 1, tf.int32)
    mask = _window_mask(corner_h, corner_w, side, height, width)

    def propose(draw, redraw):
      """New per-channel signs in the window, for the examples in `redraw` [n]."""
      new_signs = signs(tf.stack([n, 1, 1, channels]),
                        tf.random.experimental.stateless_fold_in(seeds[2], draw))
      return tf.where(redraw[:, None, None, None], new_signs, tf.zeros_like(new_signs))

    def unchanged(window_signs):
      candidate = tf.clip_by_value(xa + window_signs, 0.0, 1.0)
      same = tf.abs(candidate - xa_best) < 1e-7
      return tf.reduce_all(tf.logical_or(same, mask < 0.5), axis=[1, 2, 3])

    window_signs = propose(0, tf.ones([n], tf.bool))

    def redraw_body(draw, window_signs):
      redraw = unchanged(window_signs)
      return draw + 1, tf.where(redraw[:, None, None, None], propose(draw, redraw),
                                window_signs)

    _, window_signs = tf.while_loop(
        lambda draw, ws: tf.logical_and(draw <= MAX_REDRAWS, tf.reduce_any(unchanged(ws))),
        redraw_body, (tf.constant(1), window_signs))
    delta = mask * window_signs + (1.0 - mask) * delta
    x_new = tf.clip_by_value(xa + delta, 0.0, 1.0)
    margin_new = margin_loss(model_fn(x_new), tf.gather(y, active))
    improved = margin_new < tf.gather(margin_best, active)
    x_keep = tf.where(improved[:, None, None, None], x_new, xa_best)
    margin_keep = tf.minimum(margin_new, tf.gather(margin_best, active))
    index = active[:, None]
    return (i + 1, tf.tensor_scatter_nd_update(x_best, index, x_keep),
            tf.tensor_scatter_nd_update(margin_best, index, margin_keep))

  def cond(i, x_best, margin_best):
    del x_best
    return tf.logical_and(i < num_queries - 1, tf.reduce_any(margin_best > 0))

  _, x_best, _ = tf.while_loop(cond, body, (tf.constant(0), x_best, margin_best))
  # The clip to [0, 1] and the +-eps construction keep x_best in the ball; project anyway so that
  # float rounding can never leave it.
  return tf.stop_gradient(core.project(x_best, x, eps))
