"""Tests for aad_tf.defenses.ensemble: static models (.keras, SavedModel), the rotation of sources,
refusal of mismatched models."""

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import attacks
from aad_tf import defenses as defense_lib
from aad_tf import export as export_lib
from defense_models import CLASSES, EPS, SHAPE, images, tiny_classifier


@pytest.fixture(scope='module')
def static_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('static') / 'static.keras')
  tiny_classifier(seed=7).save(path)
  return path


def test_ensemble_rotates_sources_with_the_step(static_path):
  static, = defense_lib.load_static_models([static_path], input_shape=SHAPE,
                                             num_classes=CLASSES)
  current = tiny_classifier(seed=3)
  current_fn = lambda x: current(x, training=False)
  step = tf.Variable(0, dtype=tf.int64)
  ensemble = defense_lib.EnsembleDefense([static], step_fn=lambda: step)
  config = defense_lib.DefenseConfig(defense='ensemble',
                                     hparams={'ensemble_models': (static_path,)})
  x = tf.constant(images())
  craft = tf.function(lambda x: ensemble.craft(current_fn, x, None, config))
  from_current = attacks.single_step(current_fn, x, None, eps=EPS).numpy()
  from_static = attacks.single_step(static, x, None, eps=EPS).numpy()
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
    config = defense_lib.DefenseConfig(defense='ensemble', hparams={'ensemble_models': (path,)})
    with pytest.raises(ValueError, match=message):
      defense_lib.AADModel(classifier, 'gradcam', config)
  with pytest.raises(ValueError, match='does not exist'):
    defense_lib.load_static_model(str(tmp_path / 'missing.keras'))
  (tmp_path / 'not_a_model').mkdir()
  with pytest.raises(ValueError, match='neither'):
    defense_lib.load_static_model(str(tmp_path / 'not_a_model'))


def test_unbound_ensemble_refuses_to_craft():
  config = defense_lib.DefenseConfig(defense='ensemble', hparams={'ensemble_models': ('a.keras',)})
  with pytest.raises(ValueError, match='bind'):
    defense_lib.BASE_DEFENSES['ensemble'].craft(lambda x: x, tf.zeros([1, *SHAPE]), None, config)


def test_saved_model_static_model_matches_classifier(tmp_path):
  classifier = tiny_classifier(seed=5)
  path = export_lib.export_saved_model(classifier, 'gradcam', str(tmp_path / 'saved_model'))
  static = defense_lib.load_static_model(path)
  assert static.input_shape == SHAPE and static.num_classes == CLASSES
  x = tf.constant(images())
  np.testing.assert_allclose(static(x).numpy(), classifier(x).numpy(), rtol=1e-5, atol=1e-5)
  defense_lib.check_static_model(static, input_shape=SHAPE, num_classes=CLASSES)
  with pytest.raises(ValueError, match='classes'):
    defense_lib.check_static_model(static, input_shape=SHAPE, num_classes=10)


def test_ensemble_needs_static_models_and_a_known_attack():
  with pytest.raises(ValueError, match='ensemble_models'):
    defense_lib.DefenseConfig(defense='ensemble')
  with pytest.raises(ValueError, match='ensemble_attack'):
    defense_lib.DefenseConfig(defense='ensemble',
                              hparams={'ensemble_models': ['a.keras'], 'ensemble_attack': 'pgd'})
  config = defense_lib.DefenseConfig(defense='ensemble', hparams={'ensemble_models': ['a.keras']})
  assert config.hparams.ensemble_models == ('a.keras',)


def test_check_inputs_loads_and_checks_the_static_models(static_path):
  config = defense_lib.DefenseConfig(defense='ensemble',
                                     hparams={'ensemble_models': (static_path,)})
  ensemble = defense_lib.get_defense('ensemble')
  ensemble.check_inputs(config, input_shape=SHAPE, num_classes=CLASSES)
  with pytest.raises(ValueError, match='predicts 3 classes'):
    ensemble.check_inputs(config, input_shape=SHAPE, num_classes=10)
