"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020), L-inf, native TF2.

APGD is PGD with momentum and a step size that adapts itself, so that it needs no tuning:

  * start at a uniform random point of the eps ball, step size eta = 2 * eps;
  * z = P(x_k + eta * sign(grad)),
    x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})), alpha = 0.75 (1 at step 0);
  * at checkpoints w_j = ceil(p_j * N_iter), p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), each example whose step size
    (1) raised its loss in at most rho = 75 % of the steps since the last checkpoint, or
    (2) was not halved at the last checkpoint and whose best loss did not improve since then,
    halves its step size and restarts from its best point (and that point's gradient).
    As in the authors' code (`check_oscillation` reads the loss history at index -1, a row
    not yet written), the first checkpoint compares the loss after the first step with 0, not
    with the starting loss: a positive loss (CE) counts that step as a raise, a negative one
    (targeted DLR while the example is still correct) does not, so APGD-T halves its step
    there more often than a comparison with the starting loss would.

Losses (per example, ascended):
  'ce'   cross-entropy.
  'dlr'  Difference of Logits Ratio, -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3): invariant to
         shifting and scaling the logits, so saturated softmax outputs cannot hide gradients.
  targeted DLR (`apgd_targeted`), -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), run once for
         each of the `num_target_classes` classes ranked highest after y on the clean input,
         each run only on the examples still correctly classified (AutoAttack's APGD-T).

The returned image is, per example, the first misclassified iterate if any was found, else the
iterate of highest loss. An example leaves the loop once misclassified: later iterations run
the model only on the examples still classified correctly (the authors' code attacks every
example for all iterations and returns the last misclassified iterate; which examples are
fooled is the same, since each example's step sizes and checkpoints are its own, up to float
rounding where a kernel's result depends on the batch size). So `model_fn` is called on
sub-batches and must treat examples independently (inference mode: no batch statistics).
Everything is one `tf.while_loop`, so a call traces once inside a `tf.function` whatever the
number of iterations.
"""

import tensorflow as tf

from aad_tf.attacks import conv_gradient
from aad_tf.attacks import core

MOMENTUM = 0.75  # alpha of the momentum update (paper Sec. 3.1)
RHO = 0.75  # condition 1: fraction of loss-increasing steps below which the step size halves
P1 = 0.22  # first checkpoint, as a fraction of the iterations
P_DECAY = 0.03  # the gap between checkpoints shrinks by this fraction ...
P_MIN = 0.06  # ... down to this fraction of the iterations
LOSSES = ('ce', 'dlr')


def checkpoints(num_steps: int) -> list[int]:
  """The iterations w_j = ceil(p_j * num_steps) at which APGD may halve its step size.

  p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), as in the paper; the
  intervals between checkpoints are rounded as in the authors' code: max(int(0.22 N), 1) first,
  then shrinking by max(int(0.03 N), 1) down to max(int(0.06 N), 1).

  Returns:
    The checkpoint iterations in (0, num_steps], increasing.
  """
  first, decay, minimum = _intervals(num_steps)
  points, interval, point = [], first, 0
  while point + interval <= num_steps:
    point += interval
    points.append(point)
    interval = max(interval - decay, minimum)
  return points


def _intervals(num_steps: int):
  return (max(int(P1 * num_steps), 1), max(int(P_DECAY * num_steps), 1),
          max(int(P_MIN * num_steps), 1))


def _full_precision(logits: tf.Tensor) -> tf.Tensor:
  logits = tf.convert_to_tensor(logits)
  return logits if logits.dtype == tf.float64 else tf.cast(logits, tf.float32)


def dlr_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """Untargeted DLR loss [B]: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12).

  Args:
    logits: [B, K] with K >= 3.
    labels: int [B].
  """
  logits = _full_precision(logits)
  top = tf.math.top_k(logits, k=3).values  # [B, 3], descending
  correct = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)
  onehot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
  other = tf.reduce_max(logits - 1e9 * onehot, axis=-1)
  return -(correct - other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: tf.Tensor, labels: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
  """Targeted DLR loss [B]: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).

  Args:
    logits: [B, K] with K >= 4.
    labels: int [B], the true classes y.
    targets: int [B], the target classes t.
  """
  logits = _full_precision(logits)
  top = tf.math.top_k(logits, k=4).values
  correct = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)
  target = tf.gather(logits, tf.cast(targets, tf.int32), batch_dims=1)
  return -(correct - target) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _check(eps, num_steps, num_restarts):
  eps = core.check_eps(eps)
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f'num_steps must be a positive integer, got {num_steps}.')
  if int(num_restarts) != num_restarts or num_restarts < 1:
    raise ValueError(f'num_restarts must be a positive integer, got {num_restarts}.')
  return eps


def _random_start(x: tf.Tensor, eps: float, seed: tf.Tensor) -> tf.Tensor:
  """x + eps * t / ||t||_inf, t uniform in [-1, 1]^d (the authors' start), clipped to [0, 1]."""
  t = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0, dtype=x.dtype)
  t_max = tf.reduce_max(tf.abs(t), axis=[1, 2, 3], keepdims=True)
  return core.project(x + eps * t / (t_max + 1e-12), x, eps)


def _expand(v: tf.Tensor) -> tf.Tensor:
  return v[:, None, None, None]


def apgd_run(loss_fn, model_fn, x, y, x_start, *, eps: float, num_steps: int):
  """One APGD run from `x_start` (no restarts); the building block of `apgd`.

  Args:
    loss_fn: (logits [n, K], rows int [n]) -> per-example loss [n] to ascend, where `rows` are
      the positions in the batch of the n examples the logits belong to (the loop runs the
      model only on the examples not yet misclassified).
    model_fn: x -> logits.
    x, y: clean images [B, H, W, C] and int labels [B].
    x_start: the starting point [B, H, W, C], inside the ball.
    eps, num_steps: as for `apgd`.

  Returns:
    (x_out [B, H, W, C], fooled bool [B], best loss [B]): per example the first misclassified
    iterate, else the iterate of highest loss; the best loss stops at the first misclassified
    iterate.
  """
  eps = core.check_eps(eps)
  first, decay, minimum = _intervals(num_steps)

  def value_and_grad(x_adv, rows):
    with tf.GradientTape() as tape:
      tape.watch(x_adv)
      logits = model_fn(x_adv)
      loss = loss_fn(logits, rows)
      total = tf.reduce_sum(loss)
    with conv_gradient.fast_input_gradients():
      grad = tape.gradient(total, x_adv)
    grad = tf.zeros_like(x_adv) if grad is None else grad
    fooled = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.gather(y, rows))
    return loss, grad, fooled

  batch = tf.shape(x)[0]
  loss, grad, fooled = value_and_grad(x_start, tf.range(batch, dtype=tf.int64))
  state = dict(
      i=tf.constant(0),
      x_adv=x_start, x_prev=x_start, grad=grad,
      step=tf.fill([batch], tf.constant(2.0 * eps, x.dtype)),
      x_best=x_start, grad_best=grad, loss_best=loss,
      x_best_adv=x_start, fooled=fooled,
      loss_prev=loss, increases=tf.zeros([batch], tf.float32),
      counter=tf.constant(0), interval=tf.constant(first),
      loss_best_last_check=loss,
      # As in the authors' code, condition 2 cannot fire at the first checkpoint.
      reduced_last_check=tf.ones([batch], tf.bool))

  def body(s):
    a = tf.cast(tf.where(s['i'] > 0, MOMENTUM, 1.0), x.dtype)
    momentum_dir = s['x_adv'] - s['x_prev']
    z = core.project(s['x_adv'] + _expand(s['step']) * tf.sign(s['grad']), x, eps)
    x_new = core.project(s['x_adv'] + a * (z - s['x_adv']) + (1.0 - a) * momentum_dir,
                                x, eps)
    # The model runs on the examples still classified correctly; a fooled example keeps its
    # loss and gradient, and only its x_best_adv (set when it was fooled) is read later.
    rows = tf.where(tf.logical_not(s['fooled']))[:, 0]
    loss_rows, grad_rows, fooled_rows = value_and_grad(tf.gather(x_new, rows), rows)
    at_rows = rows[:, None]
    loss = tf.tensor_scatter_nd_update(s['loss_prev'], at_rows, loss_rows)
    grad = tf.tensor_scatter_nd_update(s['grad'], at_rows, grad_rows)
    fooled_now = tf.tensor_scatter_nd_update(tf.zeros_like(s['fooled']), at_rows, fooled_rows)
    x_best_adv = tf.where(_expand(fooled_now), x_new, s['x_best_adv'])
    fooled = tf.logical_or(s['fooled'], fooled_now)
    # The reference compares the first step's loss with 0 (see the module docstring).
    previous = tf.where(s['i'] > 0, s['loss_prev'], tf.zeros_like(s['loss_prev']))
    increases = s['increases'] + tf.cast(loss > previous, tf.float32)
    improved = loss > s['loss_best']
    x_best = tf.where(_expand(improved), x_new, s['x_best'])
    grad_best = tf.where(_expand(improved), grad, s['grad_best'])
    loss_best = tf.where(improved, loss, s['loss_best'])

    counter = s['counter'] + 1
    at_check = tf.equal(counter, s['interval'])
    oscillating = increases <= tf.cast(s['interval'], tf.float32) * RHO
    stalled = tf.logical_and(tf.logical_not(s['reduced_last_check']),
                             s['loss_best_last_check'] >= loss_best)
    reduce = tf.logical_and(at_check, tf.logical_or(oscillating, stalled))
    return (dict(
        i=s['i'] + 1,
        x_adv=tf.where(_expand(reduce), x_best, x_new),
        x_prev=s['x_adv'],
        grad=tf.where(_expand(reduce), grad_best, grad),
        step=tf.where(reduce, s['step'] / 2.0, s['step']),
        x_best=x_best, grad_best=grad_best, loss_best=loss_best,
        x_best_adv=x_best_adv, fooled=fooled, loss_prev=loss,
        increases=tf.where(at_check, tf.zeros_like(increases), increases),
        counter=tf.where(at_check, 0, counter),
        interval=tf.where(at_check, tf.maximum(s['interval'] - decay, minimum), s['interval']),
        loss_best_last_check=tf.where(at_check, loss_best, s['loss_best_last_check']),
        reduced_last_check=tf.where(at_check, reduce, s['reduced_last_check'])),)

  def cond(s):
    return tf.logical_and(s['i'] < num_steps, tf.logical_not(tf.reduce_all(s['fooled'])))

  state = tf.while_loop(cond, body, (state,))[0]
  x_out = tf.where(_expand(state['fooled']), state['x_best_adv'], state['x_best'])
  return x_out, state['fooled'], state['loss_best']


def default_seed(seed) -> tf.Tensor:
  if seed is None:
    return tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int32)
  return tf.cast(seed, tf.int32)


def _over_restarts(run, num_restarts):
  """Runs run(r) -> (x_adv, fooled) for r < num_restarts; keeps each example's first success.

  Returns:
    (x_adv, fooled bool [B]).
  """
  best, fooled = run(tf.constant(0))
  if num_restarts == 1:
    return best, fooled

  def body(r, best, fooled):
    candidate, candidate_fooled = run(r)
    take = tf.logical_and(tf.logical_not(fooled), candidate_fooled)
    return (r + 1, tf.where(_expand(take), candidate, best), tf.logical_or(fooled, take))

  _, best, fooled = tf.while_loop(lambda r, *_: r < num_restarts, body,
                                  (tf.constant(1), best, fooled))
  return best, fooled


def outcome(x_adv: tf.Tensor, fooled: tf.Tensor, return_fooled: bool):
  """An attack's return value: x_adv (stop_gradient), with `return_fooled` also `fooled`."""
  x_adv = tf.stop_gradient(x_adv)
  return (x_adv, fooled) if return_fooled else x_adv


def apgd(model_fn: core.ModelFn, x, y, *, eps: float, num_steps: int = 100,
         loss: str = 'ce', num_restarts: int = 1, seed: tf.Tensor | None = None,
         return_fooled: bool = False):
  """Untargeted APGD-CE or APGD-DLR under an L-inf bound.

  Args:
    model_fn: x -> logits [B, K], inference mode.
    x: images [B, H, W, C] in [0, 1].
    y: int labels [B].
    eps: L-inf radius in [0, 1].
    num_steps: iterations per restart (paper: 100).
    loss: 'ce' or 'dlr' (needs K >= 3).
    num_restarts: random restarts; each example keeps its first successful one.
    seed: optional stateless seed [2]; restart r uses fold_in(seed, r).
    return_fooled: also return which examples the attack found misclassified.

  Returns:
    Adversarial images [B, H, W, C] (stop_gradient), in the ball and in [0, 1]; with
    `return_fooled`, (images, fooled bool [B]): misclassified by model_fn at the iterate
    returned, as the attack evaluated it (on the sub-batch still attacked at that step).
  """
  eps = _check(eps, num_steps, num_restarts)
  if loss not in LOSSES:
    raise ValueError(f'loss must be one of {LOSSES}, got {loss!r}.')
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.cast(y, tf.int32)
  base_seed = default_seed(seed)
  if loss == 'ce':
    loss_fn = lambda logits, rows: core.cross_entropy(logits, tf.gather(y, rows))
  else:
    loss_fn = lambda logits, rows: dlr_loss(logits, tf.gather(y, rows))

  def run(r):
    start = _random_start(x, eps, tf.random.experimental.stateless_fold_in(base_seed, r))
    x_adv, fooled, _ = apgd_run(loss_fn, model_fn, x, y, start, eps=eps, num_steps=num_steps)
    return x_adv, fooled

  return outcome(*_over_restarts(run, num_restarts), return_fooled)


def first_success_on_robust(run, model_fn: core.ModelFn, x, y, num_runs: int
                            ) -> tuple[tf.Tensor, tf.Tensor]:
  """Runs j = 0 .. num_runs - 1, each only on the examples still correctly classified.

  The reference's loop over target classes (AutoAttack's APGD-T and FAB-T): examples that the
  clean model or an earlier run already misclassify are not attacked again, so later runs cost
  only what is left. One `tf.while_loop`; the subsets have dynamic size. A run fools an example
  if the run itself found it misclassified or model_fn misclassifies the run's point on the
  run's sub-batch (the reference's check); either is model_fn's own verdict on that point, so
  neither is dropped for the other.

  Args:
    run: (j, index int64 [n], x [n, H, W, C], y [n]) -> (x_adv [n, H, W, C], fooled bool [n]),
      where `index` holds the positions of the n examples in the batch.
    model_fn: x -> logits, to decide which examples are fooled.
    x, y: images [B, H, W, C] and int labels [B].
    num_runs: how many runs (static).

  Returns:
    (x_adv [B, H, W, C], fooled bool [B]): for each example fooled by some run, that first
    run's point; for the others the last run's point (x where the clean input is already
    misclassified, which counts as fooled).
  """
  def predict(images):
    return tf.argmax(model_fn(images), axis=-1, output_type=tf.int32)

  def body(j, x_adv, robust):
    index = tf.where(robust)[:, 0]
    xs, ys = tf.gather(x, index), tf.gather(y, index)
    candidate, fooled = run(j, index, xs, ys)
    fooled = tf.logical_or(fooled, tf.not_equal(predict(candidate), ys))
    rows = index[:, None]
    return (j + 1, tf.tensor_scatter_nd_update(x_adv, rows, candidate),
            tf.tensor_scatter_nd_update(robust, rows, tf.logical_not(fooled)))

  def cond(j, x_adv, robust):
    del x_adv
    return tf.logical_and(j < num_runs, tf.reduce_any(robust))

  robust = tf.equal(predict(x), y)
  _, x_adv, robust = tf.while_loop(cond, body, (tf.constant(0), x, robust))
  return x_adv, tf.logical_not(robust)


def apgd_targeted(model_fn: core.ModelFn, x, y, *, eps: float, num_steps: int = 100,
                  num_target_classes: int = 9, seed: tf.Tensor | None = None,
                  return_fooled: bool = False):
  """APGD-T: APGD on the targeted DLR loss towards each of the top runner-up classes.

  Target t_j (j = 1 .. num_target_classes) is the class ranked j-th highest after the first on
  the clean input (AutoAttack's choice); run j starts at a fresh random point and attacks only
  the examples that the clean model and runs 1 .. j-1 classify correctly, as the reference does
  (the attack is untargeted in its success criterion).

  Args:
    model_fn: x -> logits [B, K], inference mode; K >= 4.
    x, y: images [B, H, W, C] in [0, 1] and int labels [B].
    eps: L-inf radius in [0, 1].
    num_steps: iterations per target class.
    num_target_classes: how many target classes to try, at most K - 1.
    seed: optional stateless seed [2]; run j starts from fold_in(seed, j).
    return_fooled: also return which examples the attack found misclassified.

  Returns:
    Adversarial images [B, H, W, C] (stop_gradient), in the ball and in [0, 1]; with
    `return_fooled`, (images, fooled bool [B]) (see `first_success_on_robust`).
  """
  eps = _check(eps, num_steps, num_target_classes)
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.cast(y, tf.int32)
  base_seed = default_seed(seed)
  clean_logits = model_fn(x)
  num_classes = clean_logits.shape[-1]
  if num_classes is not None and (num_classes < 4 or num_target_classes > num_classes - 1):
    raise ValueError(f'apgd_targeted needs K >= 4 classes and num_target_classes <= K - 1; '
                     f'got K={num_classes}, num_target_classes={num_target_classes}.')
  ranking = tf.argsort(clean_logits, axis=-1, direction='DESCENDING', stable=True)

  def run(j, index, xs, ys):
    targets = tf.cast(tf.gather(ranking[:, j + 1], index), tf.int32)
    loss_fn = lambda logits, rows: dlr_targeted_loss(logits, tf.gather(ys, rows),
                                                     tf.gather(targets, rows))
    start = _random_start(xs, eps, tf.random.experimental.stateless_fold_in(base_seed, j))
    x_adv, fooled, _ = apgd_run(loss_fn, model_fn, xs, ys, start, eps=eps,
                                num_steps=num_steps)
    return x_adv, fooled

  return outcome(*first_success_on_robust(run, model_fn, x, y, num_target_classes),
                 return_fooled)
