"""Tests for aad_tf.base_defenses: StepLL, ensemble adversarial training and TRADES."""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app
from absl import flags

from aad_tf import attacks
from aad_tf import base_defenses
from aad_tf import data as data_lib
from aad_tf import defense as defense_lib
from aad_tf import export as export_lib
from aad_tf import overfitting
from trainers import main
from trainers import train_flags

SHAPE = (8, 8, 1)
CLASSES = 3
EPS = 0.3


def tiny_classifier(shape=SHAPE, classes=CLASSES, seed=0):
  """conv -> ReLU ('gradcam') -> dense: small enough for second-order AAD steps on CPU."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input(shape=shape)
  h = keras.layers.Conv2D(4, 3, padding='same', name='conv')(inputs)
  h = keras.layers.ReLU(name='gradcam')(h)
  h = keras.layers.Flatten()(h)
  return keras.Model(inputs, keras.layers.Dense(classes, name='logits')(h))


def linear_model(seed=0):
  """A linear softmax classifier on flattened SHAPE images, as (model_fn, W, b) in float32."""
  rng = np.random.default_rng(seed)
  dim = int(np.prod(SHAPE))
  w = rng.normal(size=(dim, CLASSES)).astype(np.float32)
  b = rng.normal(size=CLASSES).astype(np.float32)
  fn = lambda x: tf.matmul(tf.reshape(x, [-1, dim]), w) + b
  return fn, w.astype(np.float64), b.astype(np.float64)


def images(n=6, seed=1):
  rng = np.random.default_rng(seed)
  return rng.uniform(0.1, 0.9, size=(n, *SHAPE)).astype(np.float32)


def np_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def np_kl(clean, adv):
  p, q = np_softmax(clean), np_softmax(adv)
  return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


@pytest.fixture(scope='module')
def static_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('static') / 'static.keras')
  tiny_classifier(seed=7).save(path)
  return path


# ---------------------------------------------------------------------------------------------
# Loss terms and attacks against NumPy.

def test_registry_lists_the_new_defenses():
  for name in ('stepll', 'ensemble', 'trades'):
    assert name in defense_lib.BASE_DEFENSES
    assert defense_lib.BASE_DEFENSES[name].adversarial


def test_kl_divergence_matches_numpy():
  rng = np.random.default_rng(0)
  clean = rng.normal(scale=3.0, size=(5, 4))
  adv = rng.normal(scale=3.0, size=(5, 4))
  got = base_defenses.kl_divergence(tf.constant(clean, tf.float32), tf.constant(adv, tf.float32))
  np.testing.assert_allclose(got.numpy(), np_kl(clean, adv), rtol=1e-4, atol=1e-6)
  same = base_defenses.kl_divergence(tf.constant(clean, tf.float32),
                                     tf.constant(clean, tf.float32))
  np.testing.assert_allclose(same.numpy(), 0.0, atol=1e-6)


def test_kl_divergence_finite_for_saturated_probabilities():
  clean = tf.constant([[200.0, -200.0, 0.0]])
  adv = tf.constant([[-200.0, 200.0, 0.0]])
  value = base_defenses.kl_divergence(clean, adv).numpy()
  assert np.isfinite(value).all()
  np.testing.assert_allclose(value, [400.0], rtol=1e-5)


def test_trades_loss_matches_numpy():
  rng = np.random.default_rng(3)
  clean = rng.normal(size=(4, CLASSES))
  adv = rng.normal(size=(4, CLASSES))
  y = np.array([0, 2, 1, 1])
  config = defense_lib.DefenseConfig(defense='trades', trades_beta=2.5)
  per_example, parts = defense_lib.BASE_DEFENSES['trades'].loss(
      tf.constant(y), tf.constant(clean, tf.float32), tf.constant(adv, tf.float32), config)
  ce = -np.log(np_softmax(clean)[np.arange(4), y])
  np.testing.assert_allclose(parts['class_loss'].numpy(), ce, rtol=1e-5)
  np.testing.assert_allclose(parts['kl_loss'].numpy(), np_kl(clean, adv), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(per_example.numpy(), ce + 2.5 * np_kl(clean, adv), rtol=1e-4)


def test_stepll_step_matches_numpy_and_moves_away_from_least_likely():
  fn, w, b = linear_model()
  x = images()
  x_adv = base_defenses.single_step(fn, tf.constant(x), None, eps=EPS, method='stepll').numpy()
  flat = x.reshape(len(x), -1).astype(np.float64)
  logits = flat @ w + b
  y_ll = logits.argmin(axis=-1)
  # d CE(z, y_LL) / dx = (softmax(z) - onehot(y_LL)) W^T for z = x W + b.
  grad = (np_softmax(logits) - np.eye(CLASSES)[y_ll]) @ w.T
  expected = np.clip(flat - EPS * np.sign(grad), 0.0, 1.0).reshape(x.shape)
  np.testing.assert_allclose(x_adv, expected, atol=1e-6)
  adv_logits = x_adv.reshape(len(x), -1) @ w + b
  ce_ll = lambda z: -np.log(np_softmax(z)[np.arange(len(x)), y_ll])
  assert np.all(ce_ll(adv_logits) < ce_ll(logits))


def test_single_step_fgsm_matches_attacks_fgsm():
  fn, _, _ = linear_model()
  x, y = tf.constant(images()), tf.constant([0, 1, 2, 0, 1, 2])
  np.testing.assert_allclose(
      base_defenses.single_step(fn, x, y, eps=EPS, method='fgsm').numpy(),
      attacks.fgsm(fn, x, y, eps=EPS).numpy(), atol=1e-7)


def test_random_step_lands_on_the_ball_or_the_centre():
  # With a = eps / 2: x' = x +- a, then +- (eps - a), so interior pixels move by 0 or eps exactly.
  fn, _, _ = linear_model()
  x = np.random.default_rng(2).uniform(0.35, 0.65, size=(8, *SHAPE)).astype(np.float32)
  x_adv = base_defenses.single_step(fn, tf.constant(x), None, eps=EPS, method='stepll',
                                    random_step=0.5).numpy()
  moved = np.abs(x_adv - x)
  assert np.all(np.isclose(moved, 0.0, atol=1e-6) | np.isclose(moved, EPS, atol=1e-6))
  assert 0.2 < np.mean(np.isclose(moved, EPS, atol=1e-6)) < 0.8
  plain = base_defenses.single_step(fn, tf.constant(x), None, eps=EPS, method='stepll').numpy()
  np.testing.assert_allclose(np.abs(plain - x), EPS, atol=1e-6)


def test_seeded_random_draws_repeat():
  fn, _, _ = linear_model()
  x = tf.constant(images())
  seed = tf.constant([3, 4], tf.int64)
  step = lambda s: base_defenses.single_step(fn, x, None, eps=EPS, random_step=0.5, seed=s)
  np.testing.assert_array_equal(step(seed).numpy(), step(seed).numpy())
  assert not np.array_equal(step(seed).numpy(), step(seed + 1).numpy())
  trades = lambda s: base_defenses.trades_attack(fn, x, eps=EPS, step_size=0.05, num_steps=2,
                                                 seed=s)
  np.testing.assert_array_equal(trades(seed).numpy(), trades(seed).numpy())


def test_trades_attack_raises_kl_and_stays_in_ball():
  fn, _, _ = linear_model()
  x = tf.constant(images())
  x_adv = base_defenses.trades_attack(fn, x, eps=EPS, step_size=0.05, num_steps=5,
                                      seed=tf.constant([1, 2]))
  assert np.all(np.abs(x_adv.numpy() - x.numpy()) <= EPS + 1e-6)
  assert x_adv.numpy().min() >= 0.0 and x_adv.numpy().max() <= 1.0
  kl = base_defenses.kl_divergence(fn(x), fn(x_adv)).numpy()
  start = base_defenses.trades_attack(fn, x, eps=EPS, step_size=0.05, num_steps=0,
                                      seed=tf.constant([1, 2]))
  assert np.all(np.abs(start.numpy() - x.numpy()) < 0.01)
  kl_start = base_defenses.kl_divergence(fn(x), fn(start)).numpy()
  assert np.all(kl > kl_start + 1e-3)


def test_config_validation():
  with pytest.raises(ValueError, match='trades_beta'):
    defense_lib.DefenseConfig(defense='trades', trades_beta=-1.0)
  with pytest.raises(ValueError, match='stepll_random_step'):
    defense_lib.DefenseConfig(defense='stepll', stepll_random_step=1.0)
  with pytest.raises(ValueError, match='ensemble_attack'):
    defense_lib.DefenseConfig(defense='stepll', ensemble_attack='pgd')
  with pytest.raises(ValueError, match='ensemble_models'):
    defense_lib.DefenseConfig(defense='ensemble')
  config = defense_lib.DefenseConfig(defense='ensemble', ensemble_models=['a.keras'])
  assert config.ensemble_models == ('a.keras',)


# ---------------------------------------------------------------------------------------------
# Ensemble: static models, rotation, refusal of mismatches.

def test_ensemble_rotates_sources_with_the_step(static_path):
  static, = base_defenses.load_static_models([static_path], input_shape=SHAPE,
                                             num_classes=CLASSES)
  current = tiny_classifier(seed=3)
  current_fn = lambda x: current(x, training=False)
  step = tf.Variable(0, dtype=tf.int64)
  ensemble = base_defenses.EnsembleDefense([static], step_fn=lambda: step)
  config = defense_lib.DefenseConfig(defense='ensemble', ensemble_models=(static_path,))
  x = tf.constant(images())
  craft = tf.function(lambda x: ensemble.craft(current_fn, x, None, config))
  from_current = base_defenses.single_step(current_fn, x, None, eps=EPS).numpy()
  from_static = base_defenses.single_step(static, x, None, eps=EPS).numpy()
  assert not np.allclose(from_current, from_static)
  for value, expected in ((0, from_current), (1, from_static), (2, from_current),
                          (5, from_static)):
    step.assign(value)
    np.testing.assert_allclose(craft(x).numpy(), expected, atol=1e-6)


def test_ensemble_refuses_mismatched_static_models(tmp_path):
  wrong_shape = str(tmp_path / 'shape.keras')
  tiny_classifier(shape=(10, 10, 1)).save(wrong_shape)
  wrong_classes = str(tmp_path / 'classes.keras')
  tiny_classifier(classes=5).save(wrong_classes)
  classifier = tiny_classifier()
  for path, message in ((wrong_shape, r'shape \(10, 10, 1\).*\(8, 8, 1\)'),
                        (wrong_classes, 'predicts 5 classes.*has 3')):
    config = defense_lib.DefenseConfig(defense='ensemble', ensemble_models=(path,))
    with pytest.raises(ValueError, match=message):
      defense_lib.AADModel(classifier, 'gradcam', config)
  with pytest.raises(ValueError, match='does not exist'):
    base_defenses.load_static_model(str(tmp_path / 'missing.keras'))
  (tmp_path / 'not_a_model').mkdir()
  with pytest.raises(ValueError, match='neither'):
    base_defenses.load_static_model(str(tmp_path / 'not_a_model'))


def test_unbound_ensemble_refuses_to_craft():
  config = defense_lib.DefenseConfig(defense='ensemble', ensemble_models=('a.keras',))
  with pytest.raises(ValueError, match='bind'):
    defense_lib.BASE_DEFENSES['ensemble'].craft(lambda x: x, tf.zeros([1, *SHAPE]), None, config)


def test_saved_model_static_model_matches_classifier(tmp_path):
  classifier = tiny_classifier(seed=5)
  path = export_lib.export_saved_model(classifier, 'gradcam', str(tmp_path / 'saved_model'))
  static = base_defenses.load_static_model(path)
  assert static.input_shape == SHAPE and static.num_classes == CLASSES
  x = tf.constant(images())
  np.testing.assert_allclose(static(x).numpy(), classifier(x).numpy(), rtol=1e-5, atol=1e-5)
  base_defenses.check_static_model(static, input_shape=SHAPE, num_classes=CLASSES)
  with pytest.raises(ValueError, match='classes'):
    base_defenses.check_static_model(static, input_shape=SHAPE, num_classes=10)


# ---------------------------------------------------------------------------------------------
# One training step per defense, with and without AAD.

@pytest.mark.parametrize('aad', [False, True], ids=['plain', 'aad'])
@pytest.mark.parametrize('name', ['stepll', 'ensemble', 'trades'])
def test_one_train_step_updates_weights_with_finite_losses(name, aad, static_path):
  attack = defense_lib.AttackConfig(eps=EPS, step_size=0.1, num_steps=2)
  config = defense_lib.DefenseConfig(
      defense=name, aad=aad, attack=attack, stepll_random_step=0.5,
      ensemble_models=(static_path,) if name == 'ensemble' else ())
  classifier = tiny_classifier(seed=11)
  model = defense_lib.AADModel(classifier, 'gradcam', config)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in classifier.trainable_weights]
  x = images(n=8, seed=4)
  y = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
  history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
  logs = {k: v[-1] for k, v in history.history.items()}
  expected = {'loss', 'class_loss', 'clean_acc', 'adv_acc'}
  expected |= {'kl_loss'} if name == 'trades' else set()
  expected |= {'rect_loss', 'pres_loss'} if aad else set()
  assert expected <= set(logs), logs
  assert all(np.isfinite(v) for v in logs.values()), logs
  changed = [not np.allclose(b, a.numpy()) for b, a in zip(before, classifier.trainable_weights)]
  assert all(changed)
  assert int(model.optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize('name', ['stepll', 'ensemble', 'trades'])
def test_train_step_under_eps_warmup(name, static_path):
  # During a warm-up eps is a tensor inside the compiled step: no Python branching on it.
  attack = defense_lib.AttackConfig(eps=EPS, step_size=0.1, num_steps=2, warmup_steps=4)
  config = defense_lib.DefenseConfig(
      defense=name, attack=attack, stepll_random_step=0.5,
      ensemble_models=(static_path,) if name == 'ensemble' else ())
  model = defense_lib.AADModel(tiny_classifier(seed=2), 'gradcam', config, seed=1)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  history = model.fit(images(n=8, seed=6), np.arange(8) % CLASSES, batch_size=4, epochs=1,
                      verbose=0)
  assert all(np.isfinite(v[-1]) for v in history.history.values())
  assert int(model.optimizer.iterations.numpy()) == 2


# ---------------------------------------------------------------------------------------------
# Flagfiles.

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def main_flags(monkeypatch):
  if 'overfit_guard' not in flags.FLAGS:  # trainers.main's flags, once per process
    main.define_flags()
  monkeypatch.chdir(ROOT)  # nested --flagfile paths are relative to the working directory
  yield flags.FLAGS
  flags.FLAGS.unparse_flags()


@pytest.mark.parametrize('aad', [False, True], ids=['plain', 'aad'])
@pytest.mark.parametrize('name', ['stepll', 'ensemble', 'trades'])
def test_flagfile_parses(name, aad, main_flags, tmp_path):
  static = str(tmp_path / 'static.keras')
  tiny_classifier(shape=(28, 28, 1), classes=10).save(static)
  cfg = f'mnist_{name}_aad' if aad else f'mnist_{name}'
  main_flags.unparse_flags()
  main_flags(['main', f'--flagfile=flags/{cfg}.cfg', f'--model_dir={tmp_path / "run"}'] +
             ([f'--ensemble_models={static}'] if name == 'ensemble' else []))
  config = train_flags.config_from_flags()
  assert (config.dataset, config.defense.defense, config.defense.aad) == ('mnist', name, aad)
  assert config.defense.attack.eps == pytest.approx(0.3)
  if name == 'trades':
    assert config.defense.trades_beta == 6.0
  if name == 'ensemble':
    assert config.defense.ensemble_models == (static,)
  rng = np.random.default_rng(0)
  arrays = data_lib.Arrays(rng.uniform(size=(20, 28, 28, 1)).astype(np.float32),
                           np.arange(20) % 10, rng.uniform(size=(20, 28, 28, 1)).astype(np.float32),
                           np.arange(20) % 10)
  guard = main.overfit_guard(config, arrays)
  if name == 'trades':
    assert guard is None
  else:
    assert isinstance(guard, overfitting.OverfitGuard)
    assert (guard.mode, guard.every_steps) == ('warn', 200)


def test_ensemble_flag_mismatch_is_a_usage_error(main_flags, tmp_path):
  wrong = str(tmp_path / 'wrong.keras')
  tiny_classifier().save(wrong)
  main_flags.unparse_flags()
  main_flags(['main', '--flagfile=flags/mnist_ensemble.cfg', f'--model_dir={tmp_path / "run"}',
              f'--ensemble_models={wrong}'])
  with pytest.raises(app.UsageError, match=r'takes images of shape \(8, 8, 1\)'):
    train_flags.config_from_flags()
