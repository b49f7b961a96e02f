"""Tests for aad_tf/runs.py: a run's settings (config.json) and weights by one rule (issue 13, 16).

One rule for every binary that reads a run (trainers.evaluate, export, analyze, visualize): the
newer of the newest checkpoint and export/model.keras wins, logged; corrupt checkpoints are
skipped, not deleted. Settings come from config.json; an older one without eval_eps falls back to
the run's flags.txt, logged once with how to migrate.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf import checkpointing
from aad_tf import data as data_lib
from aad_tf import defenses
from aad_tf import export as export_lib
from aad_tf import files
from aad_tf import precision
from aad_tf import runs
from aad_tf import training
from trainers import export as export_binary

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_worker  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]


def weights_of(model):
  return [w.numpy() for w in model.weights]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.fixture
def run(tmp_path):
  """A tiny run with ckpt-2 and ckpt-4 and a stale export/model.keras (other weights, older)."""
  config = training.TrainConfig(
      model_dir=str(tmp_path / 'run'), keep_prob=1.0, batch_size=8, train_steps=4,
      optimizer='sgd', learning_rate=0.01, seed=1, checkpoint_every=2, keep_checkpoints=5,
      defense=defenses.DefenseConfig(defense='none'))
  model = training.train(config, train_worker.tiny_arrays(data_lib))
  keras.utils.set_random_seed(9)
  stale, _ = training.build_classifier(config)
  keras_path = export_lib.export_keras(stale, runs.keras_path(config.model_dir))
  ckpt_index = os.path.join(config.model_dir, 'checkpoints', 'ckpt-4.index')
  mtime = os.path.getmtime(ckpt_index)
  os.utime(keras_path, (mtime - 100, mtime - 100))  # exported, then trained on with --noexport
  return config, weights_of(model.classifier), weights_of(stale)


def test_the_newer_of_checkpoint_and_export_wins_and_is_logged(run, caplog):
  config, trained, stale = run
  caplog.set_level('INFO', logger='absl')
  loaded = runs.load_classifier(config.model_dir)
  assert loaded.origin.endswith('ckpt-4 (step 4)')
  assert_same(weights_of(loaded.classifier), trained)
  assert any('ckpt-4 is newer than export/model.keras' in r.getMessage() for r in caplog.records)
  # trainers.export uses the same rule (it used to pick the checkpoint while trainers.evaluate
  # picked the stale export).
  assert export_binary.load_classifier(config.model_dir, 'auto', None)[2] == loaded.origin

  keras_path = runs.keras_path(config.model_dir)
  newer = os.path.getmtime(keras_path) + 1000
  os.utime(keras_path, (newer, newer))
  loaded = runs.load_classifier(config.model_dir)
  assert loaded.origin == keras_path
  assert_same(weights_of(loaded.classifier), stale)
  assert any('export/model.keras is newer than ckpt-4' in r.getMessage()
             for r in caplog.records)
  # Asked for explicitly, each kind is what was asked for.
  assert runs.load_classifier(config.model_dir, source='checkpoint').origin.endswith('(step 4)')
  assert runs.load_classifier(
      config.model_dir, checkpoint=os.path.join(config.model_dir, 'checkpoints', 'ckpt-2')
  ).origin.endswith('ckpt-2 (step 2)')


def test_corrupt_newest_checkpoint_is_skipped_and_left_in_place(run, caplog):
  config, _, stale = run
  ckpt_dir = pathlib.Path(config.model_dir) / 'checkpoints'
  data = ckpt_dir / 'ckpt-4.data-00000-of-00001'
  data.write_bytes(data.read_bytes()[:100])  # truncated (an IndexError before issue 13)
  caplog.set_level('INFO', logger='absl')
  loaded = runs.load_classifier(config.model_dir, source='checkpoint')
  assert loaded.origin.endswith('ckpt-2 (step 2)')
  line = next(r.getMessage() for r in caplog.records if r.levelname == 'WARNING')
  assert line.startswith('Using ckpt-2: ckpt-4 is corrupt (Read less bytes than requested)')
  assert data.exists() and len(data.read_bytes()) == 100  # a reader never moves or deletes
  with pytest.raises(checkpointing.CheckpointError, match=r'ckpt-4 is corrupt'):
    runs.load_classifier(config.model_dir, checkpoint=str(ckpt_dir / 'ckpt-4'))

  # Every checkpoint corrupt: auto falls back to the export, saying so.
  data2 = ckpt_dir / 'ckpt-2.data-00000-of-00001'
  data2.write_bytes(data2.read_bytes()[:100])
  loaded = runs.load_classifier(config.model_dir)
  assert loaded.origin == runs.keras_path(config.model_dir)
  assert_same(weights_of(loaded.classifier), stale)


def test_missing_weights_are_value_errors(tmp_path):
  config = training.TrainConfig(model_dir=str(tmp_path / 'run'))
  with pytest.raises(ValueError, match='config.json not found'):
    runs.load_classifier(config.model_dir)
  os.makedirs(config.model_dir)
  files.write_json(os.path.join(config.model_dir, 'config.json'), config.to_json())
  with pytest.raises(ValueError, match='Neither a checkpoint'):
    runs.load_classifier(config.model_dir)
  with pytest.raises(ValueError, match='model.keras does not exist'):
    runs.load_classifier(config.model_dir, source='keras')
  with pytest.raises(ValueError, match='source must be one of'):
    runs.load_classifier(config.model_dir, source='newest')


def run_binary(binary, *args):
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run([sys.executable, '-m', f'trainers.{binary}', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_evaluate_binary_uses_the_newer_checkpoint_not_a_stale_export(run, shared_data_dir):
  config, _, _ = run
  run_binary('evaluate', f'--model_dir={config.model_dir}', f'--data_dir={shared_data_dir}',
             '--attacks=clean', '--nodiagnostics', '--eval_examples=20', '--batch_size=20')
  report = json.loads((pathlib.Path(config.model_dir) / 'robustness.json').read_text())
  assert report['source'].endswith('ckpt-4 (step 4)')


def test_visualize_binary_uses_the_same_rule(run, shared_data_dir):
  """trainers.visualize used to read the latest checkpoint alone, whatever the export."""
  config, _, _ = run
  keras_path = runs.keras_path(config.model_dir)
  args = [f'--model_dir={config.model_dir}', f'--data_dir={shared_data_dir}',
          '--figures=attention', '--num_images=2', '--dpi=50']
  result = run_binary('visualize', *args)
  assert 'ckpt-4 (step 4) (ckpt-4 is newer than export/model.keras)' in result.stderr
  assert result.stdout.split() == [os.path.join(config.model_dir, 'figures', 'attention.png')]
  newer = os.path.getmtime(keras_path) + 1000
  os.utime(keras_path, (newer, newer))
  result = run_binary('visualize', *args)
  assert f'{keras_path} (export/model.keras is newer than ckpt-4)' in result.stderr
  result = run_binary('visualize', *args, '--weights=checkpoint')
  assert 'ckpt-4 (step 4) (asked for)' in result.stderr


def write_config(model_dir, config_json, flags_txt=None):
  os.makedirs(model_dir, exist_ok=True)
  files.write_json(os.path.join(model_dir, 'config.json'), config_json)
  if flags_txt is not None:
    pathlib.Path(model_dir, 'flags.txt').write_text(flags_txt)


def test_config_json_holds_the_settings_later_binaries_need(tmp_path):
  model_dir = str(tmp_path / 'new')
  config = training.TrainConfig(model_dir=model_dir, eval_eps=0.25)
  saved = config.to_json()
  assert saved['eval_eps'] == 0.25 and saved['gradcam_layer'] == 'gradcam'
  # flags.txt is not read for a config.json that holds eval_eps, even when it says otherwise.
  write_config(model_dir, saved, '--eval_eps=0.1\n')
  loaded = runs.load_config(model_dir)
  assert loaded == config and loaded.eval_eps == 0.25
  write_config(model_dir, training.TrainConfig(model_dir=model_dir).to_json())
  assert runs.load_config(model_dir).eval_eps is None  # the dataset default


def test_old_config_json_falls_back_to_flags_txt_logged_once(tmp_path, caplog):
  caplog.set_level('INFO', logger='absl')
  old = training.TrainConfig(model_dir=str(tmp_path / 'old')).to_json()
  for field in ('eval_eps', 'gradcam_layer'):
    del old[field]
  write_config(str(tmp_path / 'old'), old, '--dataset=mnist\n--eval_eps=0.15\n--aad\n')
  for _ in range(2):
    assert runs.load_config(str(tmp_path / 'old')).eval_eps == 0.15
  warnings = [r.getMessage() for r in caplog.records if 'written before' in r.getMessage()]
  assert len(warnings) == 1
  assert 'read --eval_eps=0.15 from' in warnings[0]
  assert 'To migrate, add "eval_eps": 0.15 to that config.json' in warnings[0]
  # No --eval_eps in flags.txt (the run evaluated at the dataset default), or no flags.txt.
  write_config(str(tmp_path / 'older'), old, '--dataset=mnist\n')
  assert runs.load_config(str(tmp_path / 'older')).eval_eps is None
  write_config(str(tmp_path / 'oldest'), old)
  assert runs.load_config(str(tmp_path / 'oldest')).eval_eps is None
  assert any('"eval_eps": null' in r.getMessage() for r in caplog.records)


def test_old_run_directory_still_opens_its_classifier(run, caplog):
  config, trained, _ = run
  path = pathlib.Path(config.model_dir) / 'config.json'
  old = json.loads(path.read_text())
  for field in ('eval_eps', 'gradcam_layer'):
    del old[field]
  path.write_text(json.dumps(old))
  loaded = runs.load_classifier(config.model_dir, source='checkpoint')
  assert loaded.gradcam_layer == 'gradcam' and loaded.step == 4
  assert_same(weights_of(loaded.classifier), trained)


def test_load_exported_keras_and_saved_model(tmp_path):
  config = training.TrainConfig(model_dir=str(tmp_path / 'run'))
  classifier, layer = training.build_classifier(config)
  export_lib.export_all(classifier, layer, config.model_dir)
  keras_file = runs.load_exported(runs.keras_path(config.model_dir))
  assert keras_file.name == 'lenet' and keras_file.target.feature_fn is not None
  saved = runs.load_exported(os.path.join(config.model_dir, 'export', 'saved_model'))
  assert saved.name == 'saved_model' and saved.target.feature_fn is None
  x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
  np.testing.assert_allclose(saved.target.model_fn(x).numpy(),
                             keras_file.target.model_fn(x).numpy(), atol=1e-5)
  with pytest.raises(ValueError, match='does not exist'):
    runs.load_exported(str(tmp_path / 'nothing.keras'))


# Issue 25: whatever the run trained in, readers and the closing evaluation see float32.

def bfloat16_run(tmp_path):
  """A run trained in bfloat16 (config.json, ckpt-1) and its AADModel."""
  config = training.TrainConfig(
      model_dir=str(tmp_path / 'bf16'), keep_prob=1.0, batch_size=8, train_steps=1,
      mixed_precision='bfloat16', defense=defenses.DefenseConfig(defense='none'))
  model = training.train(config, train_worker.tiny_arrays(data_lib))
  assert precision.reduced_precision_layers(model.classifier)  # it did train in bfloat16
  return config, model


def test_closing_evaluation_attacks_a_float32_copy(tmp_path, monkeypatch):
  config, model = bfloat16_run(tmp_path)
  config = dataclasses.replace(config, eval_eps=0.1)
  seen = []
  real = runs.evaluation.evaluate

  def spy(classifier, dataset, attacks, **kwargs):
    seen.append(classifier)
    return real(classifier, dataset, attacks, **kwargs)
  monkeypatch.setattr(runs.evaluation, 'evaluate', spy)
  arrays = train_worker.tiny_arrays(data_lib)
  dataset = tf.data.Dataset.from_tensor_slices((arrays.x_test[:8], arrays.y_test[:8])).batch(8)
  attacks = runs.evaluation.standard_attacks(['clean', 'fgsm'], eps=0.1, seed=0)
  runs.closing_evaluation(model, config, dataset, attacks, train_wall_time=1.0)
  assert len(seen) == 1 and precision.reduced_precision_layers(seen[0]) == ()
  assert seen[0](arrays.x_test[:2]).dtype == tf.float32
  for a, b in zip(seen[0].get_weights(), model.classifier.get_weights()):
    np.testing.assert_array_equal(a, b)
  with open(os.path.join(config.model_dir, 'eval.json')) as f:
    saved = json.load(f)
  assert (saved['training_precision'], saved['evaluation_precision']) == ('bfloat16', 'float32')


def test_readers_of_a_bfloat16_run_get_float32(tmp_path):
  config, model = bfloat16_run(tmp_path)
  # An export/model.keras saved in bfloat16 (as before issue 25), newer than the checkpoint.
  os.makedirs(os.path.dirname(runs.keras_path(config.model_dir)))
  model.classifier.save(runs.keras_path(config.model_dir))
  for source in ('checkpoint', 'keras'):
    loaded = runs.load_classifier(config.model_dir, source=source)
    assert precision.reduced_precision_layers(loaded.classifier) == (), source
  exported = runs.load_exported(runs.keras_path(config.model_dir))
  x = train_worker.tiny_arrays(data_lib).x_test[:2]
  assert exported.target.model_fn(x).dtype == tf.float32
  assert precision.reduced_precision_layers(exported.target.keras_model) == ()
