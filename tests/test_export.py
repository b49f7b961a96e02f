"""Tests for aad_tf/export.py and trainers/export.py: the SavedModel TF Serving loads, and .keras.

The SavedModel is checked the way it is used: loaded in a fresh Python process that cannot
import aad_tf, and through `saved_model_cli`, against the Keras classifier in this process.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app

from aad_tf import checkpointing
from aad_tf import defenses as defense_lib
from aad_tf import export as export_lib
from aad_tf import files
from aad_tf import gradcam as gradcam_lib
from aad_tf import models
from aad_tf import precision
from aad_tf import training
from trainers import export as export_binary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}

# Runs in a fresh interpreter: load the SavedModel with TensorFlow alone and call both
# signatures on inputs.npz; write outputs.npz and the error messages of bad requests.
LOADER = textwrap.dedent('''
    import json, sys
    sys.modules['aad_tf'] = None  # any import of aad_tf would now fail
    import numpy as np
    import tensorflow as tf
    export_dir, inputs, outputs, errors = sys.argv[1:]
    model = tf.saved_model.load(export_dir)
    x = np.load(inputs)['x']
    result = {}
    for name in ('serving_default', 'attention'):
      for key, value in model.signatures[name](images=tf.constant(x)).items():
        result[f'{name}/{key}'] = value.numpy()
    np.savez(outputs, **result)
    messages = {}
    bad = {'wrong_size': np.zeros((2, 32, 32, 3), np.float32),
           'wrong_rank': np.zeros((2, 28, 28), np.float32),
           'nan': np.full((1, 28, 28, 1), np.nan, np.float32)}
    for case, value in bad.items():
      try:
        model.signatures['serving_default'](images=tf.constant(value))
        messages[case] = None
      except Exception as e:  # the message is what a client sees
        messages[case] = str(e)
    messages['imports_aad_tf'] = any(m.startswith('aad_tf.') for m in sys.modules)
    json.dump(messages, open(errors, 'w'))
''')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """A run directory with one checkpoint, exported by the binary as version 1."""
  root = tmp_path_factory.mktemp('export')
  config = training.TrainConfig(model_dir=str(root / 'run'))
  tf.io.gfile.makedirs(config.model_dir)
  files.write_json(os.path.join(config.model_dir, 'config.json'), config.to_json())
  keras.utils.set_random_seed(3)
  classifier, layer = training.build_classifier(config)
  optimizer = training.build_optimizer(config)
  optimizer.build(classifier.trainable_variables)
  optimizer.iterations.assign(7)
  checkpointing.Checkpointer(os.path.join(config.model_dir, 'checkpoints'), classifier,
                             optimizer).save()
  export_dir = root / 'serving' / 'aad' / '1'
  result = subprocess.run(
      [sys.executable, '-m', 'trainers.export', f'--model_dir={config.model_dir}',
       f'--export_dir={export_dir}'], cwd=REPO, env=ENV, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ckpt-7' in result.stdout
  return classifier, layer, export_dir, root


def test_export_writes_a_model_card_beside_the_saved_model(exported):
  _, _, export_dir, _ = exported
  info = json.loads((export_dir / 'model_info.json').read_text())
  assert (info['architecture'], info['dataset']) == ('lenet', 'mnist')
  assert info['clean_acc'] == info['autoattack_acc'] == 'not evaluated'  # no robustness.json
  assert 'AutoAttack accuracy: not evaluated' in (export_dir / 'MODEL_CARD.md').read_text()
  assert (export_dir / 'saved_model.pb').exists()


def inputs(n=5, seed=0):
  """Test images, two of them with values outside [0, 1] (clipped by the signatures)."""
  x = np.random.default_rng(seed).uniform(0, 1, (n, 28, 28, 1)).astype(np.float32)
  x[0] = x[0] * 3 - 1
  x[1, :4] = 7.0
  return x


def expected(classifier, layer, x):
  clipped = tf.clip_by_value(x, 0.0, 1.0)
  logits = classifier(clipped, training=False).numpy()
  features = gradcam_lib.FeatureModel(classifier, layer)
  cam, _ = gradcam_lib.gradcam(features.fn(), clipped)
  return logits, gradcam_lib.normalize_cam(cam).numpy()


def test_saved_model_in_a_fresh_process_matches_keras(exported, tmp_path):
  classifier, layer, export_dir, _ = exported
  x = inputs()
  np.savez(tmp_path / 'inputs.npz', x=x)
  (tmp_path / 'loader.py').write_text(LOADER)
  result = subprocess.run(
      [sys.executable, str(tmp_path / 'loader.py'), str(export_dir), str(tmp_path / 'inputs.npz'),
       str(tmp_path / 'outputs.npz'), str(tmp_path / 'errors.json')],
      cwd=str(tmp_path), env=ENV, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(tmp_path / 'outputs.npz')
  logits, attention = expected(classifier, layer, x)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  for name in ('serving_default', 'attention'):
    np.testing.assert_allclose(out[f'{name}/logits'], logits, atol=1e-5)
    np.testing.assert_allclose(out[f'{name}/probabilities'], probs, atol=1e-6)
    np.testing.assert_array_equal(out[f'{name}/classes'], logits.argmax(-1))
    assert out[f'{name}/classes'].dtype == np.int64
  assert out['attention/attention'].shape == (5, 14, 14)
  np.testing.assert_allclose(out['attention/attention'], attention, atol=1e-5)
  assert set(out.keys()) == {'serving_default/logits', 'serving_default/probabilities',
                             'serving_default/classes', 'attention/logits',
                             'attention/probabilities', 'attention/classes',
                             'attention/attention'}
  errors = json.loads((tmp_path / 'errors.json').read_text())
  assert errors['imports_aad_tf'] is False
  for case, shape in (('wrong_size', '[2 32 32 3]'), ('wrong_rank', '[2 28 28]')):
    assert 'images must be float32 [N, 28, 28, 1] with values in [0, 1]; got shape' in (
        errors[case] or ''), errors[case]
    assert shape in errors[case]
  assert 'images must be finite' in (errors['nan'] or '')


def test_saved_model_cli_show_and_run(exported, tmp_path):
  classifier, layer, export_dir, _ = exported
  show = subprocess.run(['saved_model_cli', 'show', '--dir', str(export_dir), '--all'],
                        env=ENV, capture_output=True, text=True, timeout=300)
  assert show.returncode == 0, show.stderr[-3000:]
  text = show.stdout
  for needed in ("signature_def['serving_default']", "signature_def['attention']",
                 "inputs['images'] tensor_info", 'shape: (-1, 28, 28, 1)',
                 "outputs['classes'] tensor_info", 'dtype: DT_INT64', 'shape: (-1, 14, 14)'):
    assert needed in text, needed
  x = inputs(3, seed=1)
  np.save(tmp_path / 'x.npy', x)
  run = subprocess.run(
      ['saved_model_cli', 'run', '--dir', str(export_dir), '--tag_set', 'serve',
       '--signature_def', 'serving_default', '--inputs', f'images={tmp_path / "x.npy"}',
       '--outdir', str(tmp_path / 'out')], env=ENV, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  logits, _ = expected(classifier, layer, x)
  np.testing.assert_allclose(np.load(tmp_path / 'out' / 'logits.npy'), logits, atol=1e-5)
  np.testing.assert_array_equal(np.load(tmp_path / 'out' / 'classes.npy'), logits.argmax(-1))


def test_keras_file_loads_in_safe_mode(exported):
  classifier, _, export_dir, root = exported
  path = root / 'serving' / 'aad' / 'model-1.keras'
  loaded = keras.models.load_model(str(path), safe_mode=True)
  x = inputs(3, seed=2).clip(0, 1)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), classifier(x).numpy(), atol=1e-5)


def test_export_refuses_the_training_wrapper_and_bad_paths(tmp_path):
  classifier, layer = training.build_classifier(training.TrainConfig(model_dir=str(tmp_path)))
  wrapper = defense_lib.AADModel(classifier, layer, defense_lib.DefenseConfig())
  with pytest.raises(ValueError, match='not the training wrapper'):
    export_lib.export_saved_model(wrapper, layer, str(tmp_path / '1'))
  with pytest.raises(ValueError, match='end in .keras'):
    export_lib.export_keras(classifier, str(tmp_path / 'model.h5'))
  with pytest.raises(app.UsageError, match='positive integer version'):
    export_binary.version_of('/models/aad/latest')
  with pytest.raises(app.UsageError, match='positive integer version'):
    export_binary.version_of('/models/aad/0')
  assert export_binary.version_of('/models/aad/12/') == 12


def test_export_binary_never_overwrites_a_version(exported):
  _, _, export_dir, _ = exported
  with pytest.raises(app.UsageError, match='exists; export a new version number'):
    export_binary.check_destination(str(export_dir), overwrite=False)
  export_binary.check_destination(str(export_dir), overwrite=True)
  export_binary.check_destination(str(export_dir.parent / '2'), overwrite=False)


def test_overwrite_renames_the_old_version_aside_first(exported, tmp_path, monkeypatch):
  """A model server watching <base> must find a whole version at <base>/<version> at all times
  but between two renames: nothing is deleted before the new version is in place."""
  classifier, layer, _, _ = exported
  export_dir = str(tmp_path / 'aad' / '1')
  export_lib.export_saved_model(classifier, layer, export_dir)
  operations = []
  rmtree, rename = tf.io.gfile.rmtree, tf.io.gfile.rename

  def logged_rmtree(path):
    rmtree(path)
    operations.append(('rmtree', path, os.path.exists(os.path.join(export_dir,
                                                                    'saved_model.pb'))))

  def logged_rename(source, target, overwrite=False):
    rename(source, target, overwrite)
    operations.append(('rename', source, target))

  monkeypatch.setattr(tf.io.gfile, 'rmtree', logged_rmtree)
  monkeypatch.setattr(tf.io.gfile, 'rename', logged_rename)
  export_lib.export_saved_model(classifier, layer, export_dir)
  monkeypatch.undo()
  assert operations == [('rename', export_dir, export_dir + '.old'),
                        ('rename', export_dir + '.tmp', export_dir),
                        ('rmtree', export_dir + '.old', True)], operations
  assert sorted(os.listdir(tmp_path / 'aad')) == ['1']  # the old one is gone, no leftovers
  assert os.path.exists(os.path.join(export_dir, 'saved_model.pb'))


def test_export_binary_falls_back_from_a_corrupt_latest_checkpoint(tmp_path):
  config = training.TrainConfig(model_dir=str(tmp_path / 'run'))
  tf.io.gfile.makedirs(config.model_dir)
  files.write_json(os.path.join(config.model_dir, 'config.json'), config.to_json())
  classifier, _ = training.build_classifier(config)
  optimizer = training.build_optimizer(config)
  optimizer.build(classifier.trainable_variables)
  checkpointer = checkpointing.Checkpointer(os.path.join(config.model_dir, 'checkpoints'),
                                            classifier, optimizer)
  for step in (5, 7):
    optimizer.iterations.assign(step)
    checkpointer.save()
  data = os.path.join(config.model_dir, 'checkpoints', 'ckpt-7.data-00000-of-00001')
  with open(data, 'r+b') as f:  # truncated: a raw IndexError before issue 13
    f.truncate(os.path.getsize(data) // 2)
  export_dir = tmp_path / 'serving' / '1'
  result = subprocess.run(
      [sys.executable, '-m', 'trainers.export', f'--model_dir={config.model_dir}',
       f'--export_dir={export_dir}', '--noexport_keras'], cwd=REPO, env=ENV,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ckpt-5 (step 5)' in result.stdout
  assert 'Using ckpt-5: ckpt-7 is corrupt (Read less bytes than requested)' in result.stderr
  assert os.path.exists(data) and (export_dir / 'saved_model.pb').exists()


def test_a_bfloat16_classifier_is_exported_in_float32(tmp_path):
  """Issue 25: model.keras and the SavedModel compute in float32 whatever training used."""
  keras.utils.set_random_seed(5)
  with precision.dtype_policy('mixed_bfloat16'):
    classifier = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  root = export_lib.export_all(classifier, models.get_spec('lenet').gradcam_layer,
                               str(tmp_path / 'run'))
  reloaded = keras.models.load_model(os.path.join(root, 'model.keras'), safe_mode=True)
  assert precision.reduced_precision_layers(reloaded) == ()
  x = np.random.default_rng(1).uniform(size=(4, 28, 28, 1)).astype(np.float32)
  keras.utils.set_random_seed(5)
  reference = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  reference.set_weights(classifier.get_weights())
  expected = reference(x).numpy()  # the float32 computation of the same weights
  np.testing.assert_allclose(reloaded(x).numpy(), expected, rtol=1e-5, atol=1e-6)
  served = tf.saved_model.load(os.path.join(root, 'saved_model'))
  outputs = served.signatures['serving_default'](images=tf.constant(x))
  assert outputs['logits'].dtype == tf.float32
  np.testing.assert_allclose(outputs['logits'].numpy(), expected, rtol=1e-5, atol=1e-6)
  # The bfloat16 network's own logits are farther off than that: the export changed them.
  assert np.abs(classifier(x).numpy() - expected).max() > 1e-4
