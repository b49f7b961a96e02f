"""How to add a base defense, proven: a toy defense declared in this file alone trains an AADModel.

The block between the two rules below is everything a new defense is (what its module in
aad_tf/defenses/ would hold): its hyperparameters, its metric names (one of them, 'toy_penalty',
a loss-part name nothing else knows), how it crafts and its loss. Registering it makes it a
DefenseConfig choice, a --defense value with a generated --toy_weight flag, a config.json entry
and train/toy_penalty in the step's logs; no other file changes.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from aad_tf import defenses
from aad_tf import losses
from defense_models import CLASSES, images, tiny_classifier
from trainers import defense_flags


# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ToyHyperparameters(defenses.Hyperparameters):
  toy_weight: float = defenses.hyperparameter(
      1.0, 'Weight of the logit penalty for --defense=toy.', lower_bound=0.0)


class ToyDefense(defenses.BaseDefense):
  """PGD examples (BaseDefense.craft); L_c(f(x_adv), y) + toy_weight * mean_j z_j(x_adv)^2."""
  hyperparameters = ToyHyperparameters
  metric_names = ('class_loss', 'toy_penalty')

  def loss(self, y, clean_logits, adv_logits, config):
    lc = losses.classification(y, adv_logits, config.classification_loss)
    penalty = tf.reduce_mean(tf.square(adv_logits), axis=-1)
    return lc + config.hparams.toy_weight * penalty, {'class_loss': lc, 'toy_penalty': penalty}
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def toy():
  defenses.register_defense('toy', ToyDefense())
  yield
  defenses.unregister_defense('toy')


ATTACK = defenses.AttackConfig(eps=0.1, step_size=0.05, num_steps=2)
X = images(n=8, seed=4)
Y = np.arange(8) % CLASSES


def toy_model(hparams, aad=False, lr=0.1):
  config = defenses.DefenseConfig(defense='toy', aad=aad, attack=ATTACK, hparams=hparams)
  model = defenses.AADModel(tiny_classifier(seed=3), 'gradcam', config, seed=5)
  model.compile(optimizer=keras.optimizers.SGD(lr))
  model.optimizer.build(model.trainable_variables)
  return model


def test_a_toy_defense_from_flags_trains_and_logs_its_new_loss_part(toy):
  values = flags.FlagValues()
  defense_flags.define_flags(values)
  values(['prog', '--toy_weight=0.5'])
  hparams = defense_flags.hparams_from_flags('toy', values)
  assert hparams == {'toy_weight': 0.5}
  model = toy_model(hparams)
  assert model.config.hparams.toy_weight == 0.5
  # The step's examples, crafted as the step will (the seed is a function of the step).
  x, y = tf.constant(X), tf.constant(Y, tf.int32)
  x_adv = model.base_defense.craft(model.inference_fn(), x, y, model.step_config())
  logits = model.classifier(x_adv, training=True).numpy()
  logs = model.train_step((x, y))
  assert set(logs) == {'loss', 'class_loss', 'toy_penalty', 'clean_acc', 'adv_acc'}
  penalty = np.mean(np.square(logits), axis=-1)
  np.testing.assert_allclose(float(logs['toy_penalty']), penalty.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(logs['loss']), float(logs['class_loss']) + 0.5 * penalty.mean(),
                             rtol=1e-5)
  assert 'toy_penalty' in defenses.metric_names()
  # config.json round trip of its hyperparameters.
  payload = dataclasses.asdict(model.config)
  assert payload['hparams'] == {'toy_weight': 0.5}
  assert defenses.DefenseConfig.from_json(payload) == model.config


def test_the_toy_weight_moves_the_update_linearly(toy):
  def update(weight):
    model = toy_model({'toy_weight': weight})
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return np.concatenate([v.numpy().ravel() for v in model.classifier.trainable_variables])

  initial = np.concatenate([v.numpy().ravel()
                            for v in tiny_classifier(seed=3).trainable_variables])
  plain, once, twice = update(0.0), update(1.0), update(2.0)
  assert np.abs(plain - initial).max() > 1e-4
  assert np.abs(once - plain).max() > 1e-5
  np.testing.assert_allclose(twice - plain, 2 * (once - plain), rtol=1e-3, atol=1e-7)


def test_the_toy_defense_composes_with_aad_and_is_gone_after_unregistering(toy):
  logs = toy_model({'toy_weight': 1.0}, aad=True).train_step((tf.constant(X), tf.constant(Y)))
  assert {'toy_penalty', 'rect_loss', 'pres_loss'} <= set(logs)
  assert all(np.isfinite(float(v)) for v in logs.values())
  with pytest.raises(ValueError, match='toy_weight must be >= 0'):
    defenses.DefenseConfig(defense='toy', hparams={'toy_weight': -1.0})


def test_unregistered_toy_leaves_no_trace():
  assert 'toy' not in defenses.BASE_DEFENSES
  assert 'toy_penalty' not in defenses.metric_names()
  values = flags.FlagValues()
  defense_flags.define_flags(values)
  assert 'toy_weight' not in values
