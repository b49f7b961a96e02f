"""Square Attack: the authors' p schedule, ball and range, query budget, and it breaks a model."""

import numpy as np
import pytest
import tensorflow as tf

import eval_models
from aad_tf.attacks import square


def authors_p_selection(p_init, it, n_iters):
  """p_selection of the authors' square_attack_linf (github.com/max-andr/square-attack)."""
  it = int(it / n_iters * 10000)
  if 10 < it <= 50:
    return p_init / 2
  if 50 < it <= 200:
    return p_init / 4
  if 200 < it <= 500:
    return p_init / 8
  if 500 < it <= 1000:
    return p_init / 16
  if 1000 < it <= 2000:
    return p_init / 32
  if 2000 < it <= 4000:
    return p_init / 64
  if 4000 < it <= 6000:
    return p_init / 128
  if 6000 < it <= 8000:
    return p_init / 256
  if 8000 < it <= 10000:
    return p_init / 512
  return p_init


@pytest.mark.parametrize('n_iters', [100, 1000, 5000, 10000])
def test_p_schedule_matches_the_authors(n_iters):
  for it in sorted({0, 1, 5, 10, 11, 50, 51, 199, 200, 201, 999, 2500, n_iters - 1} - {n_iters}):
    if it < n_iters:
      got = float(square.p_schedule(it, n_iters, 0.8))
      assert got == pytest.approx(authors_p_selection(0.8, it, n_iters)), it


def test_window_side():
  # s = round(sqrt(p * H * W)), at least 1, at most min(H, W) - 1.
  assert int(square.window_side(tf.constant(0.8), 28, 28)) == 25
  assert int(square.window_side(tf.constant(1.0), 28, 28)) == 27
  assert int(square.window_side(tf.constant(1e-6), 28, 28)) == 1
  assert int(square.window_side(tf.constant(0.05), 32, 32)) == round(np.sqrt(0.05 * 1024))


@pytest.fixture(scope='module')
def model_and_data(shared_data_dir):
  model = eval_models.trained_model(shared_data_dir)
  x, y = eval_models.first_test_examples(shared_data_dir, 100)
  return (lambda images: model(images, training=False)), tf.constant(x), tf.constant(y)


def accuracy(model_fn, x, y):
  return float(np.mean(np.argmax(model_fn(x).numpy(), -1) == y.numpy()))


def test_square_breaks_an_undefended_model_and_stays_in_the_ball(model_and_data):
  model_fn, x, y = model_and_data
  fn = tf.function(lambda a, b: square.square_linf(model_fn, a, b, eps=0.3, num_queries=300,
                                                   seed=[0, 1]))
  x_adv = fn(x, y)
  assert accuracy(model_fn, x, y) > 0.9
  assert accuracy(model_fn, x_adv, y) < 0.1
  assert float(tf.reduce_max(tf.abs(x_adv - x))) <= 0.3 + 1e-6
  assert float(tf.reduce_min(x_adv)) >= 0.0 and float(tf.reduce_max(x_adv)) <= 1.0


def test_query_budget_and_early_stop(model_and_data):
  """Run eagerly, counting the images the model sees: at most num_queries per example."""
  model_fn, x, y = model_and_data
  seen = []

  def counting(images):
    seen.append(int(tf.shape(images)[0]))
    return model_fn(images)

  n, budget = 20, 15
  x_adv = square.square_linf(counting, x[:n], y[:n], eps=0.3, num_queries=budget, seed=[0, 2])
  assert len(seen) <= 1 + budget  # the start, then one batched query per iteration
  assert seen[0] == n and sum(seen) <= n * (1 + budget)
  # Only examples not yet fooled are queried: the batch shrinks as examples are broken, and
  # the examples left out at the end are fooled.
  assert all(a >= b for a, b in zip(seen, seen[1:]))
  assert seen[-1] < n
  wrong = np.argmax(model_fn(x_adv).numpy(), -1) != y[:n].numpy()
  assert wrong.sum() >= n - seen[-1]


def test_margin_never_worsens_and_eps_zero_is_identity(model_and_data):
  model_fn, x, y = model_and_data
  margin = lambda images: square.margin_loss(model_fn(images), y[:30]).numpy()
  x_adv = square.square_linf(model_fn, x[:30], y[:30], eps=0.1, num_queries=30, seed=[0, 3])
  x_one = square.square_linf(model_fn, x[:30], y[:30], eps=0.1, num_queries=0, seed=[0, 3])
  # num_queries=0 is the stripes initialisation; later iterations only accept improvements.
  assert np.all(margin(x_adv) <= margin(x_one) + 1e-5)
  np.testing.assert_array_equal(
      square.square_linf(model_fn, x[:5], y[:5], eps=0.0, num_queries=5, seed=[0, 0]).numpy(),
      x[:5].numpy())


def test_stripes_are_vertical_and_at_the_ball_surface():
  x = tf.fill([3, 8, 8, 2], 0.5)
  x_adv = square.square_linf(lambda images: tf.zeros([tf.shape(images)[0], 10]), x,
                             tf.zeros([3], tf.int32), eps=0.1, num_queries=0, seed=[0, 4])
  delta = (x_adv - x).numpy()
  np.testing.assert_allclose(np.abs(delta), 0.1, atol=1e-6)
  np.testing.assert_array_equal(delta, np.broadcast_to(delta[:, :1], delta.shape))


@pytest.mark.parametrize('kwargs, message', [
    ({'eps': -0.1}, 'eps'), ({'eps': 0.1, 'num_queries': -1}, 'num_queries'),
    ({'eps': 0.1, 'num_queries': 2.5}, 'num_queries'),
    ({'eps': 0.1, 'p_init': 0.0}, 'p_init')])
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    square.square_linf(lambda images: tf.zeros([2, 10]), tf.zeros([2, 4, 4, 1]),
                       tf.zeros([2], tf.int32), **kwargs)


def test_one_window_and_one_sign_per_channel_for_the_whole_batch():
  """AutoAttack's Square: at each iteration every example's proposal changes the same window,
  to x + eps * (the same sign per channel), clipped to [0, 1]."""
  x = tf.random.stateless_uniform([6, 12, 12, 2], [0, 5])
  queried = []

  def recording(images):
    queried.append(images.numpy())
    return tf.tile(tf.constant([[5.0, 0.0]]), [tf.shape(images)[0], 1])  # never fooled

  square.square_linf(recording, x, tf.zeros([6], tf.int32), eps=0.1, num_queries=4,
                     seed=[0, 6])
  start, x = queried[0], x.numpy()  # constant logits: nothing is accepted, x_best stays
  assert len(queried) == 1 + 4
  for iteration, proposal in enumerate(queried[1:]):
    changed = proposal != start  # [B, H, W, C]
    rows = np.flatnonzero(changed.any(axis=(0, 2, 3)))
    cols = np.flatnonzero(changed.any(axis=(0, 1, 3)))
    side = int(square.window_side(square.p_schedule(iteration, 4, 0.8), 12, 12))
    assert rows.max() - rows.min() < side and cols.max() - cols.min() < side
    for channel in range(2):
      signs = np.sign(proposal - x)[..., channel][changed[..., channel]]
      assert len(signs) and np.all(signs == signs[0]), (iteration, channel)


def never_fooled(calls):
  """A model_fn that never misclassifies (label 0) and records the images of every call."""
  def model_fn(images):
    calls.append(images.numpy())
    return tf.tile(tf.constant([[5.0, 0.0]]), [tf.shape(images)[0], 1])
  return model_fn


@pytest.mark.parametrize('num_queries', [0, 1, 7])
def test_the_query_count_is_the_references(num_queries):
  """AutoAttack's Square queries the start, then runs n_queries iterations of one query each:
  1 + 5000 queries per example at its standard budget (issue 26: ours made 1 + 4999)."""
  calls = []
  square.square_linf(never_fooled(calls), tf.fill([3, 6, 6, 1], 0.5), tf.zeros([3], tf.int32),
                     eps=0.1, num_queries=num_queries, seed=[0, 12])
  assert [len(images) for images in calls] == [3] * (1 + num_queries)


@pytest.mark.parametrize('p_init', [0.02, 0.3])
def test_the_window_corner_is_drawn_as_the_reference_draws_it(p_init):
  """AutoAttack draws the corner with random_int(0, h - s), i.e. in [0, h - s - 1]: a window
  never covers the last row or column (issue 26: ours drew from [0, h - s])."""
  calls, height, num_queries = [], 8, 80
  x = tf.fill([2, height, height, 1], 0.5)
  square.square_linf(never_fooled(calls), x, tf.zeros([2], tf.int32), eps=0.1,
                     num_queries=num_queries, p_init=p_init, seed=[0, 13],
                     rescale_schedule=False)
  ends, last_col = set(), 0
  for iteration, proposal in enumerate(calls[1:]):
    side = int(square.window_side(square.p_schedule(iteration, num_queries, p_init, False),
                                  height, height))
    # A proposal differs from the stripes start in the window's columns whose stripe sign is
    # not the window's sign: all of the window's rows, some of its columns.
    changed = proposal != calls[0]
    rows = np.flatnonzero(changed.any(axis=(0, 2, 3)))
    if len(rows):
      assert rows.max() - rows.min() + 1 == side  # at 0.5 +- 0.1 nothing is clipped
      assert rows.min() <= height - side - 1, (iteration, side, rows)
      ends.add('first' if rows.min() == 0 else 'last' if rows.min() == height - side - 1
               else 'inner')
      last_col = max(last_col, int(np.flatnonzero(changed.any(axis=(0, 1, 3))).max()))
  assert {'first', 'last'} <= ends  # the draw reaches both ends of [0, H - s - 1]
  assert last_col <= height - 2


def test_the_windowed_queries_give_the_plain_attack(model_and_data, shared_data_dir):
  """Given the Keras model, Square recomputes only what its window reaches: the same attack up
  to float rounding (an example whose margin ties at rounding level may go another way)."""
  model = eval_models.trained_model(shared_data_dir)
  model_fn, x, y = model_and_data
  plain = square.square_linf(model_fn, x[:60], y[:60], eps=0.12, num_queries=200, seed=[0, 8])
  fast = tf.function(lambda a, b: square.square_linf(model_fn, a, b, eps=0.12, num_queries=200,
                                                      seed=[0, 8], model=model))(x[:60], y[:60])
  same = np.all(np.abs(plain.numpy() - fast.numpy()) < 1e-6, axis=(1, 2, 3))
  assert same.mean() >= 0.9, same.mean()
  assert abs(accuracy(model_fn, plain, y[:60]) - accuracy(model_fn, fast, y[:60])) <= 0.05
  assert accuracy(model_fn, fast, y[:60]) < accuracy(model_fn, x[:60], y[:60]) - 0.1
  assert float(tf.reduce_max(tf.abs(fast - x[:60]))) <= 0.12 + 1e-6
  # Windowed, model_fn only re-checks the examples a query calls fooled; plain, it answers
  # every query.
  calls = {'windowed': 0, 'plain': 0}
  for name, given in (('windowed', model), ('plain', None)):
    def counting(images, name=name):
      calls[name] += 1
      return model_fn(images)
    square.square_linf(counting, x[:20], y[:20], eps=0.12, num_queries=30, seed=[0, 9],
                       model=given)
  assert calls['plain'] > 20 and calls['windowed'] < calls['plain'], calls


def test_a_query_that_calls_an_example_fooled_is_re_checked_by_the_model(
    model_and_data, shared_data_dir, monkeypatch):
  """Windowed logits equal the model's only to rounding, so Square stops attacking an example
  only once model_fn itself calls it misclassified. Sabotaged queries that call every example
  fooled must change nothing; without the re-check the attack would stop after one query."""
  from aad_tf.attacks import windowed  # pylint: disable=g-import-not-at-top
  model = eval_models.trained_model(shared_data_dir)
  model_fn, x, y = model_and_data
  x, y = x[:40], y[:40]
  run = lambda: square.square_linf(model_fn, x, y, eps=0.12, num_queries=60, seed=[0, 10],
                                   model=model)
  honest = run().numpy()
  query = windowed.WindowedModel.query

  def lying(self, *args, **kwargs):
    logits, update = query(self, *args, **kwargs)
    # Rolled: an example the model classifies correctly (every one still queried) now has
    # its largest logit at the next class, a negative margin.
    return tf.roll(logits, shift=1, axis=1), update
  monkeypatch.setattr(windowed.WindowedModel, 'query', lying)
  monkeypatch.setattr(windowed, 'probe_error', lambda *args: 0.0)  # keep the windowed plan
  lied_to = run().numpy()
  # Every proposal is re-checked, so the model's exact margins decide, as in the plain attack.
  same = np.all(np.abs(lied_to - honest) < 1e-6, axis=(1, 2, 3))
  assert same.mean() >= 0.9, same.mean()
  robust = accuracy(model_fn, tf.constant(lied_to), y)
  assert abs(robust - accuracy(model_fn, tf.constant(honest), y)) <= 0.05
  assert robust < accuracy(model_fn, x, y) - 0.1


def test_the_exact_refresh_undoes_drift_in_the_head_cache(model_and_data, shared_data_dir,
                                                         monkeypatch):
  """The Dense head's cache is updated by differences, so rounding accumulates; every
  REFRESH_EVERY queries Square recomputes the state from the images. Here each commit adds a
  large drift to that cache: refreshed after every query the attack is the honest one, never
  refreshed it goes elsewhere."""
  from aad_tf.attacks import windowed  # pylint: disable=g-import-not-at-top
  model = eval_models.trained_model(shared_data_dir)
  model_fn, x, y = model_and_data
  run = lambda: square.square_linf(model_fn, x[:40], y[:40], eps=0.12, num_queries=60,
                                   seed=[0, 11], model=model).numpy()
  honest = run()
  commit = windowed.WindowedModel.commit

  def drifting(self, *args):
    state = commit(self, *args)
    head = state[-1]  # the head's cache (Dense pre-activations; here the logits)
    return state[:-1] + (head + tf.linspace(0.0, 2.0, head.shape[-1]),)
  monkeypatch.setattr(windowed.WindowedModel, 'commit', drifting)
  monkeypatch.setattr(windowed, 'probe_error', lambda *args: 0.0)  # keep the windowed plan
  monkeypatch.setattr(windowed, 'REFRESH_EVERY', 1)
  refreshed = run()
  monkeypatch.setattr(windowed, 'REFRESH_EVERY', 10**6)
  drifted = run()
  same = lambda a: np.all(np.abs(a - honest) < 1e-6, axis=(1, 2, 3)).mean()
  assert same(refreshed) >= 0.9, same(refreshed)
  assert same(drifted) < same(refreshed) - 0.1, (same(drifted), same(refreshed))


def test_autoattack_square_keeps_the_schedule_unscaled():
  """AutoAttack builds Square with resc_schedule=False: p halves after 10, 50, 200, ...
  iterations whatever the budget; rescaled, 5000 queries halve it after 5, 25, 100, ..."""
  assert float(square.p_schedule(11, 5000, 0.8, rescale=False)) == pytest.approx(0.4)
  assert float(square.p_schedule(9, 5000, 0.8, rescale=True)) == pytest.approx(0.4)
  assert float(square.p_schedule(4500, 5000, 0.8, rescale=False)) == pytest.approx(0.8 / 128)
  assert float(square.p_schedule(4500, 5000, 0.8, rescale=True)) == pytest.approx(0.8 / 512)
