"""Windowed forward passes: equal to the model on patched images, and the plain fallback."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf.attacks import windowed
from aad_tf.models import lenet

L = keras.layers


def sequential(image_shape, *layers):
  keras.utils.set_random_seed(1)
  model = keras.Sequential([keras.Input(image_shape), *layers])
  # Non-trivial BatchNormalization statistics, so that inference mode matters.
  for layer in model.layers:
    if isinstance(layer, L.BatchNormalization):
      layer.moving_mean.assign(np.linspace(-0.2, 0.3, layer.moving_mean.shape[0]))
      layer.moving_variance.assign(np.linspace(0.5, 2.0, layer.moving_variance.shape[0]))
  return model


def strided_gap_model():
  """Rescaling, a strided 'valid' conv, BatchNorm, 'same' max pooling (pads with -inf), a
  'valid' average pooling, a 3x3 conv, then a GlobalAveragePooling2D head and a Dense tail."""
  return sequential((13, 11, 3), L.Rescaling(2.0, offset=-1.0),
                    L.Conv2D(8, 3, strides=2, padding='valid'), L.BatchNormalization(),
                    L.LeakyReLU(0.1), L.MaxPooling2D(3, strides=1, padding='same'),
                    L.Conv2D(8, 3, padding='same', activation='tanh'),
                    L.AveragePooling2D(2, padding='valid'), L.Conv2D(6, (1, 2), padding='same'),
                    L.GlobalAveragePooling2D(), L.Dense(7, activation='relu'), L.Dense(5))


def patched_head_model():
  """The spatial part ends at a layer that mixes pixels (GlobalMaxPooling2D)."""
  return sequential((10, 10, 1), L.Conv2D(4, 3, padding='same', activation='relu'),
                    L.MaxPooling2D(2, padding='same'), L.Conv2D(4, 3, strides=2,
                                                                padding='same'),
                    L.GlobalMaxPooling2D(), L.Dense(3))


def keras_example_model():
  """Keras' simple MNIST convnet: 'valid' 3x3 convolutions, Dropout between Flatten and Dense."""
  return sequential((28, 28, 1), L.Conv2D(32, 3, activation='relu'), L.MaxPooling2D(2),
                    L.Conv2D(64, 3, activation='relu'), L.MaxPooling2D(2), L.Flatten(),
                    L.Dropout(0.5), L.Activation('tanh'), L.Dense(10))


def sparse_stride_model():
  """Strides larger than the kernel (inputs no output reads), odd sizes, a 'same' gap."""
  return sequential((30, 17, 1), L.Conv2D(3, 1, strides=3, padding='same'),
                    L.Conv2D(4, 2, strides=4, padding='valid', activation='relu'),
                    L.Flatten(), L.Dense(4))


def residual_model():
  inputs = keras.Input((8, 8, 1))
  h = L.Conv2D(2, 3, padding='same')(inputs)
  h = L.Add()([h, L.Conv2D(2, 3, padding='same')(h)])
  return keras.Model(inputs, L.Dense(3)(L.Flatten()(h)))


MODELS = {
    'lenet': (lambda: lenet.build_lenet((28, 28, 1), 10), 'dense', (28, 28, 1)),
    'keras_example': (keras_example_model, 'dense', (28, 28, 1)),
    'strided_gap': (strided_gap_model, 'gap', (13, 11, 3)),
    'patched_head': (patched_head_model, 'patched', (10, 10, 1)),
    'sparse_stride': (sparse_stride_model, 'dense', (30, 17, 1)),
}


def direct(model):
  return lambda images: model(images, training=False)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_queries_and_commits_equal_the_model_on_patched_images(name):
  build, head, image_shape = MODELS[name]
  model = build()
  plan = windowed.plan(direct(model), model, image_shape)
  assert plan.incremental and plan.head == head, plan.describe()
  height, width, channels = image_shape
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(size=(6, *image_shape)), tf.float32)
  logits, state = plan.full(images)
  np.testing.assert_allclose(logits, model(images), atol=1e-5)
  scale = 1.0 + float(tf.reduce_max(tf.abs(logits)))
  windows = [(side, h0, w0) for side in range(1, min(height, width))
             for h0, w0 in ((0, 0), (height - side, width - side), (0, width - side),
                            (height - side, 0),
                            (rng.integers(0, height - side + 1),
                             rng.integers(0, width - side + 1)))]
  for k, (side, h0, w0) in enumerate(windows):
    active = tf.constant(sorted(rng.choice(6, size=4, replace=False)), tf.int64)
    new = tf.constant(rng.uniform(size=(4, side, side, channels)), tf.float32)
    corner = (tf.constant(int(h0)), tf.constant(int(w0)))
    got, update = plan.query(state, active, corner, new)
    expected = model(windowed.patched(state[0], active, corner, new))
    assert float(tf.reduce_max(tf.abs(got - expected))) <= 1e-5 * scale, (side, h0, w0)
    accepted = tf.constant(rng.uniform(size=4) < 0.5)
    state = plan.commit(state, active, accepted, update)
    # The committed images are the patched ones where accepted, unchanged elsewhere.
    want = tf.tensor_scatter_nd_update(
        images, tf.boolean_mask(active, accepted)[:, None],
        tf.boolean_mask(windowed.patched(images, active, corner, new), accepted))
    np.testing.assert_array_equal(state[0], want)
    images = state[0]
    if k % 7 == 0:  # the accumulated state still answers like the model
      exact, fresh = plan.full(images)
      np.testing.assert_allclose(exact, model(images), atol=1e-5 * scale)
      for cached, recomputed in zip(state, fresh):
        np.testing.assert_allclose(cached, recomputed, atol=1e-4 * scale)


def test_the_windowed_pass_recomputes_less():
  """On the LeNet a 1-pixel query runs its convolutions on crops and its fc layer on the rows
  of the kernel the changed region feeds: far fewer multiply-adds than the model."""
  model = lenet.build_lenet((28, 28, 1), 10)
  plan = windowed.plan(direct(model), model, (28, 28, 1))
  state = plan.full(tf.zeros([2, 28, 28, 1]))[1]
  graph = tf.function(lambda s, new: plan.query(s, tf.constant([0, 1], tf.int64),
                                                (tf.constant(12), tf.constant(12)), new)[0])
  concrete = graph.get_concrete_function(state, tf.TensorSpec([2, 1, 1, 1]))
  ops = [op.type for op in concrete.graph.get_operations()]
  assert ops.count('Conv2D') == 2 and ops.count('MatMul') == 2
  # fc1's kernel is read through a gather of the region's rows, never whole.
  gathers = [op for op in concrete.graph.get_operations() if op.type == 'GatherV2'
             and op.inputs[0].shape.rank == 2 and op.inputs[0].shape[0] == 3136]
  assert len(gathers) == 1
  _, update = plan.query(state, tf.constant([0, 1], tf.int64), (tf.constant(12),
                                                               tf.constant(12)),
                         tf.ones([2, 1, 1, 1]))
  regions = [tuple(values.shape[1:3]) for _, values in update[:-1]]
  # The window [12, 13) reaches conv1 outputs [10, 15), pool1 [5, 8), conv2 [3, 10), pool2 [1, 5).
  assert regions == [(1, 1), (3, 3), (4, 4)], regions


def test_unsupported_models_get_the_plain_plan():
  model = residual_model()
  plan = windowed.plan(direct(model), model, (8, 8, 1))
  assert not plan.incremental and 'chain' in plan.reason
  assert not windowed.plan(direct(model), None, (8, 8, 1)).incremental
  dilated = sequential((8, 8, 1), L.Conv2D(2, 3, dilation_rate=2), L.Flatten(), L.Dense(2))
  plan = windowed.plan(direct(dilated), dilated, (8, 8, 1))
  assert not plan.incremental and 'dilated' in plan.reason
  # The plain plan answers every query with one call of model_fn on the patched images.
  calls = []
  fn = lambda images: calls.append(images.shape[0]) or model(images)
  plain = windowed.plan(fn, None, (8, 8, 1))
  images = tf.random.uniform([3, 8, 8, 1])
  _, state = plain.full(images)
  new = tf.ones([2, 2, 2, 1])
  corner = (tf.constant(3), tf.constant(5))
  logits, _ = plain.query(state, tf.constant([2, 0], tf.int64), corner, new)
  assert calls == [3, 2]
  np.testing.assert_allclose(
      logits, model(windowed.patched(images, tf.constant([2, 0]), corner, new)), atol=1e-6)


def test_a_plan_that_disagrees_with_the_model_falls_back(monkeypatch):
  """The probe compares windowed and direct logits once per model: a wrong op is caught."""
  model = patched_head_model()
  original = windowed._spatial_stage  # pylint: disable=protected-access

  def wrong(layer, size):
    stage = original(layer, size)
    if isinstance(stage, str) or not isinstance(layer, L.Conv2D):
      return stage
    return stage.__class__(**{**stage.__dict__, 'op': lambda crop, op=stage.op: op(crop) * 1.01})
  monkeypatch.setattr(windowed, '_spatial_stage', wrong)
  plan = windowed.plan(direct(model), model, (10, 10, 1))
  assert not plan.incremental and 'differ' in plan.reason


@pytest.mark.parametrize('name', sorted(MODELS))
def test_a_model_fn_that_wraps_the_model_gets_the_plain_plan(name):
  """The windowed pass runs `model`, so only a model_fn that is the model's own inference call
  may have it: a wrapper that quantises the input to 1/255 (a common preprocessing defense)
  moves the logits by 1e-4 to 1e-3 relative, which the old 1e-3 probe let through (issue 26:
  every query then attacked the undefended model, a transfer attack)."""
  build, _, image_shape = MODELS[name]
  model = build()
  quantised = lambda images: model(tf.round(images * 255.0) / 255.0, training=False)
  plan = windowed.plan(quantised, model, image_shape)
  assert not plan.incremental and 'differ' in plan.reason, plan.describe()
  assert windowed.plan(direct(model), model, image_shape).incremental


@pytest.mark.parametrize('name, layer', [('keras_example', 'Dropout'),
                                         ('strided_gap', 'BatchNormalization')])
def test_training_mode_dropout_and_batch_norm_get_the_plain_plan(name, layer):
  """In training mode Dropout draws masks and BatchNormalization uses the batch's statistics:
  not the inference-mode layers the windowed pass runs, so the plain plan answers."""
  build, _, image_shape = MODELS[name]
  model = build()
  assert any(type(l).__name__ == layer for l in model.layers)
  plan = windowed.plan(lambda images: model(images, training=True), model, image_shape)
  assert not plan.incremental and 'differ' in plan.reason, plan.describe()


def test_square_with_a_wrapped_model_fn_is_the_plain_attack_on_the_wrapper(shared_data_dir):
  """Square given the model and a model_fn that wraps it attacks model_fn: the same images as
  the plain attack, which sees model_fn only (windowed, it would attack the bare model)."""
  import eval_models  # pylint: disable=g-import-not-at-top
  from aad_tf.attacks import square  # pylint: disable=g-import-not-at-top
  model = eval_models.trained_model(shared_data_dir)
  x, y = eval_models.first_test_examples(shared_data_dir, 30)
  quantised = lambda images: model(tf.round(images * 255.0) / 255.0, training=False)
  run = lambda given: square.square_linf(quantised, x, y, eps=0.1, num_queries=60,
                                         seed=[0, 3], model=given).numpy()
  np.testing.assert_array_equal(run(model), run(None))


def test_plan_inside_a_tf_function_probes_eagerly():
  model = patched_head_model()
  images = tf.random.uniform([2, 10, 10, 1])

  @tf.function
  def run(x):
    plan = windowed.plan(direct(model), model, (10, 10, 1))
    logits, state = plan.full(x)
    return plan.query(state, tf.constant([1], tf.int64), (tf.constant(2), tf.constant(3)),
                      tf.zeros([1, 4, 4, 1]))[0], logits
  got, logits = run(images)
  np.testing.assert_allclose(logits, model(images), atol=1e-5)
  np.testing.assert_allclose(
      got, model(windowed.patched(images, tf.constant([1]), (2, 3), tf.zeros([1, 4, 4, 1]))),
      atol=1e-5)
