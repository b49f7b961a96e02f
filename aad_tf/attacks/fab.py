"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML 2020), L-inf, targeted, native TF2.

FAB looks for the smallest perturbation that changes the decision. At the iterate x^(i) it
linearises the decision boundary towards a target class t,

    g(z) = z_t(z) - z_y(z) ~ g(x^(i)) + grad g(x^(i)) . (z - x^(i)) = 0,

and takes the minimal L-inf step onto that hyperplane inside the box [0, 1]^d
(`project_linf`, paper Sec. 3.1), both from the iterate (d1) and from the clean image x (d2).
The next iterate is the biased combination (paper Eq. 8-9)

    x^(i+1) = clip((x^(i) + eta d1)(1 - alpha) + (x + eta d2) alpha, 0, 1),
    alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max),

so that it stays close to x. Once an iterate is misclassified it is recorded if it is the
closest to x so far and the attack steps back towards x: x^(i) <- x + beta (x^(i) - x)
(paper Sec. 3.3, extrapolation eta > 1 overshoots the linearised boundary a little).

AutoAttack's FAB-T (standard version): the `num_target_classes` classes ranked highest after
the first on the clean input are tried in turn, each with one run of `num_steps` iterations
started at x itself, on the examples not yet fooled; alpha_max = 0.1, eta = 1.05, beta = 0.9.
A run counts only if its smallest adversarial perturbation is within eps (norm <= eps, no
tolerance, as the reference's `res > self.eps` check); otherwise the example goes on to the
next target.

Each example has its own alpha, as in the paper and the authors' current code (some earlier
versions of it indexed `torch.max(a1 / (a1 + a2), zeros)[0]` and so gave the whole batch the
first example's alpha).
"""

import tensorflow as tf

from aad_tf.attacks import apgd as apgd_lib
from aad_tf.attacks import conv_gradient
from aad_tf.attacks import core

ALPHA_MAX = 0.1  # AutoAttack's values for L-inf
ETA = 1.05
BETA = 0.9
_NO_ADVERSARIAL = 1e10
# A bracket closes to adjacent floats within log2(hi / lam) + 24 (float32) or + 53 (float64)
# halvings; past the cap the finish is still within 2^-80 * max p of lam.
_MAX_BISECTIONS = 80


def project_linf(points: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """The smallest L-inf step d with w . (t + d) = b and t + d in [0, 1]^D, batched.

  Moving towards the hyperplane, coordinate i goes by -sign(w_i) min(lam, p_i), where p_i is
  its distance to the face of the box it moves to; the decrease of |w . t - b| is then
  H(lam) = sum_i |w_i| min(lam, p_i), piecewise linear, continuous and increasing, and lam
  solves H(lam) = |w . t - b|. The authors' code sorts the breakpoints p_i and searches them;
  here lam is bracketed by bisection on [|w . t - b| / sum |w|, max_i p_i] (H(lam) <= lam sum |w|
  gives the lower end) until the bracket stops shrinking in the dtype (no sort: on CPU a sort of
  MNIST-sized rows costs 4x the whole bisection), then solved in closed form on the linear piece
  that starts at the bracket's lower end,
  lam = (|w . t - b| - sum_{p_i <= lo} |w_i| p_i) / sum_{p_i > lo} |w_i|, clipped to the
  bracket. Where the hyperplane cannot be reached in the box (H(max p) < |w . t - b|), every
  coordinate goes to its face (as in the authors' code).

  Args:
    points: t [N, D] in [0, 1].
    w: normals [N, D].
    b: offsets [N].

  Returns:
    d [N, D].
  """
  residual = tf.reduce_sum(w * points, axis=1) - b
  direction = tf.where(residual >= 0, tf.ones_like(residual), -tf.ones_like(residual))
  w = w * direction[:, None]  # now w . t - b >= 0 and the step must decrease w . t
  residual = residual * direction
  w_abs = tf.abs(w)
  faces = tf.where(w > 0, points, 1.0 - points)  # p_i, distance to the face moved to

  def decrease(lam):  # H(lam) [N]
    return tf.reduce_sum(w_abs * tf.minimum(lam[:, None], faces), axis=1)

  whole_box = tf.reduce_max(faces, axis=1)
  reachable = decrease(whole_box) >= residual
  searching = tf.logical_and(reachable, residual > 0)  # the rows whose lam is not 0 or the box

  def shrink(lo, hi):
    mid = 0.5 * (lo + hi)
    short = decrease(mid) < residual
    return tf.where(short, mid, lo), tf.where(short, hi, mid)

  def open_bracket(lo, hi):  # a searched row's midpoint still lies strictly inside its bracket
    mid = 0.5 * (lo + hi)
    inside = tf.logical_and(mid > lo, mid < hi)
    return tf.reduce_any(tf.logical_and(searching, inside))

  # H(lam) <= lam * sum |w|, so lam >= |w . t - b| / sum |w|: the bracket starts there.
  lo = tf.minimum(residual / tf.maximum(tf.reduce_sum(w_abs, axis=1), 1e-30), whole_box)
  lo, hi = tf.while_loop(open_bracket, shrink, (lo, whole_box),
                         maximum_iterations=_MAX_BISECTIONS)
  flat_part = faces <= lo[:, None]  # coordinates already at their face on [lo, hi]
  below = tf.reduce_sum(tf.where(flat_part, w_abs * faces, tf.zeros_like(faces)), axis=1)
  above = tf.reduce_sum(tf.where(flat_part, tf.zeros_like(w_abs), w_abs), axis=1)
  lam = tf.clip_by_value((residual - below) / tf.maximum(above, 1e-30), lo, hi)
  lam = tf.where(reachable, lam, whole_box)  # unreachable: whole box
  return -tf.sign(w) * tf.minimum(lam[:, None], faces)


def fab_run(model_fn: core.ModelFn, x, y, targets, *, num_steps: int = 100,
            alpha_max: float = ALPHA_MAX, eta: float = ETA, beta: float = BETA
            ) -> tuple[tf.Tensor, tf.Tensor]:
  """One targeted FAB run from x (no random start): the closest misclassified point found.

  Args:
    model_fn: x -> logits [B, K], inference mode.
    x: images [B, H, W, C] in [0, 1].
    y: int labels [B].
    targets: int target classes [B] whose boundary with y is linearised.
    num_steps: iterations.
    alpha_max, eta, beta: the paper's bias bound, extrapolation and backward step.

  Returns:
    (x_adv [B, H, W, C], norm [B]): the misclassified iterate closest to x in L-inf and its
    distance, or (x, 1e10) where no iterate was misclassified.
  """
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.cast(y, tf.int32)
  targets = tf.cast(targets, tf.int32)
  batch = tf.shape(x)[0]
  x0 = tf.reshape(x, [batch, -1])

  def boundary(x1):
    """g = z_t - z_y [B] at x1 and its gradient [B, D]."""
    with tf.GradientTape() as tape:
      tape.watch(x1)
      logits = model_fn(x1)
      logits = logits if logits.dtype == tf.float64 else tf.cast(logits, tf.float32)
      g = tf.gather(logits, targets, batch_dims=1) - tf.gather(logits, y, batch_dims=1)
      total = tf.reduce_sum(g)
    with conv_gradient.fast_input_gradients():
      grad = tape.gradient(total, x1)
    grad = tf.zeros_like(x1) if grad is None else grad
    return tf.cast(g, tf.float32), tf.reshape(grad, [batch, -1])

  def body(i, x1, x_best, best_norm):
    g, w = boundary(x1)
    flat = tf.reshape(x1, [batch, -1])
    b = tf.reduce_sum(w * flat, axis=1) - g  # the hyperplane w . z = b
    d = project_linf(tf.concat([flat, x0], 0), tf.concat([w, w], 0), tf.concat([b, b], 0))
    d1, d2 = d[:batch], d[batch:]
    a1 = tf.maximum(tf.reduce_max(tf.abs(d1), axis=1, keepdims=True), 1e-8)
    a2 = tf.maximum(tf.reduce_max(tf.abs(d2), axis=1, keepdims=True), 1e-8)
    alpha = tf.minimum(a1 / (a1 + a2), alpha_max)
    flat = tf.clip_by_value((flat + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha,
                            0.0, 1.0)
    x1 = tf.reshape(flat, tf.shape(x))
    fooled = tf.not_equal(tf.argmax(model_fn(x1), axis=-1, output_type=tf.int32), y)
    norm = tf.reduce_max(tf.abs(flat - x0), axis=1)
    closer = tf.logical_and(fooled, norm < best_norm)
    x_best = tf.where(closer[:, None, None, None], x1, x_best)
    best_norm = tf.where(closer, norm, best_norm)
    x1 = tf.where(fooled[:, None, None, None], x + beta * (x1 - x), x1)
    return i + 1, x1, x_best, best_norm

  _, _, x_best, best_norm = tf.while_loop(
      lambda i, *_: i < num_steps, body,
      (tf.constant(0), x, x, tf.fill([batch], tf.constant(_NO_ADVERSARIAL, tf.float32))))
  return x_best, best_norm


def _check(eps, num_steps, num_target_classes, alpha_max, eta, beta):
  eps = core.check_eps(eps)
  for name, value in (('num_steps', num_steps), ('num_target_classes', num_target_classes)):
    if isinstance(value, bool) or int(value) != value or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  if not 0.0 <= alpha_max <= 1.0:
    raise ValueError(f'alpha_max must be in [0, 1], got {alpha_max}.')
  if eta < 1.0:
    raise ValueError(f'eta must be >= 1, got {eta}.')
  if not 0.0 < beta <= 1.0:
    raise ValueError(f'beta must be in (0, 1], got {beta}.')
  return eps


def fab_targeted(model_fn: core.ModelFn, x, y, *, eps: float, num_steps: int = 100,
                 num_target_classes: int = 9, alpha_max: float = ALPHA_MAX, eta: float = ETA,
                 beta: float = BETA, seed: tf.Tensor | None = None,
                 return_fooled: bool = False):
  """FAB-T under an L-inf bound, as in AutoAttack's standard version.

  Target t_j (j = 1 .. num_target_classes) is the class ranked j-th highest after the first on
  the clean input; run j attacks only the examples that runs 1 .. j-1 did not fool within eps.

  Args:
    model_fn: x -> logits [B, K], inference mode; num_target_classes <= K - 1.
    x: images [B, H, W, C] in [0, 1].
    y: int labels [B].
    eps: L-inf radius in [0, 1]: a run's point counts only if its distance is at most eps.
    num_steps: iterations per target class (AutoAttack: 100).
    num_target_classes: target classes to try (AutoAttack: 9).
    alpha_max, eta, beta: see `fab_run`.
    seed: unused (FAB-T starts at x and draws nothing); accepted for the attacks' signature.
    return_fooled: also return which examples the attack found misclassified.

  Returns:
    Adversarial images [B, H, W, C] (stop_gradient), in the ball and in [0, 1]; x itself where
    no run found a misclassified point within eps. With `return_fooled`, (images, fooled bool
    [B]) (see `apgd.first_success_on_robust`).
  """
  del seed
  eps = _check(eps, num_steps, num_target_classes, alpha_max, eta, beta)
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.cast(y, tf.int32)
  clean_logits = model_fn(x)
  num_classes = clean_logits.shape[-1]
  if num_classes is not None and num_target_classes > num_classes - 1:
    raise ValueError(f'fab_targeted needs num_target_classes <= K - 1; got K={num_classes}, '
                     f'num_target_classes={num_target_classes}.')
  ranking = tf.argsort(clean_logits, axis=-1, direction='DESCENDING', stable=True)

  def run(j, index, xs, ys):
    targets = tf.gather(ranking[:, j + 1], index)
    x_adv, norm = fab_run(model_fn, xs, ys, targets, num_steps=num_steps,
                          alpha_max=alpha_max, eta=eta, beta=beta)
    # fab_run's points are misclassified where norm < 1e10; a point beyond eps, however
    # slightly, is rejected and the example is attacked towards the next target.
    within = norm <= eps
    return tf.where(within[:, None, None, None], x_adv, xs), within

  x_adv, fooled = apgd_lib.first_success_on_robust(run, model_fn, x, y, num_target_classes)
  # Accepted points are within eps already; the projection only guards against rounding.
  return apgd_lib.outcome(core.project(x_adv, x, eps), fooled, return_fooled)
