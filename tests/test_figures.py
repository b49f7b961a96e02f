"""Tests for aad_tf.figures and trainers/visualize.py: maps, figures as PNGs, accuracy files."""

import io
import json
import os
import shutil
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import figures
from aad_tf import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACK = defense_lib.AttackConfig(eps=0.3, step_size=0.1, num_steps=3)


def tiny_classifier(seed=0):
  """A small functional CNN (28x28x1 -> 10 logits) with its Grad-CAM layer named 'cam'."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((28, 28, 1))
  h = keras.layers.Conv2D(4, 3, strides=2, padding='same', activation='relu')(inputs)
  h = keras.layers.Conv2D(6, 3, padding='same', activation='relu', name='cam')(h)
  h = keras.layers.GlobalAveragePooling2D()(h)
  return keras.Model(inputs, keras.layers.Dense(10)(h))


def images(n=4, seed=1):
  rng = np.random.default_rng(seed)
  return rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32), np.arange(n, dtype=np.int32) % 10


def reference_cam(classifier, layer, x, y):
  """Grad-CAM written out directly: ReLU(sum_k mean_ij(d z_y / d A^k) A^k), bilinear, / max."""
  body = keras.Model(classifier.inputs, classifier.get_layer(layer).output)
  head_layers = classifier.layers[classifier.layers.index(classifier.get_layer(layer)) + 1:]
  x = tf.constant(x)
  activations = body(x)
  with tf.GradientTape() as tape:
    tape.watch(activations)
    h = activations
    for layer_ in head_layers:
      h = layer_(h)
    score = tf.reduce_sum(h * tf.one_hot(y, h.shape[-1]))
  grads = tape.gradient(score, activations).numpy().astype(np.float64)
  acts = activations.numpy().astype(np.float64)
  cam = np.maximum((grads.mean(axis=(1, 2), keepdims=True) * acts).sum(-1), 0.0)
  cam = cam / (cam.max(axis=(1, 2), keepdims=True) + 1e-12)
  return tf.image.resize(cam[..., None].astype(np.float32), (28, 28), 'bilinear')[..., 0].numpy()


def read_png(path_or_bytes):
  data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, 'rb').read()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  image = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
  assert image.std() > 10, 'the figure is blank'
  return image


# ---------------------------------------------------------------------------------------------
# Maps.

def test_pick_examples_cycles_through_classes():
  labels = np.array([3, 1, 1, 0, 3, 2, 0, 2])
  np.testing.assert_array_equal(figures.pick_examples(labels, 6), [3, 1, 5, 0, 6, 2])
  with pytest.raises(ValueError, match='num must be'):
    figures.pick_examples(labels, 9)


def test_panel_maps_match_a_direct_gradcam_and_the_attack_is_bounded():
  classifier = tiny_classifier()
  x, y = images()
  panel = figures.PanelMaker(classifier, 'cam', ATTACK)(x, y)
  np.testing.assert_allclose(panel.cams, reference_cam(classifier, 'cam', x, y), atol=1e-5)
  np.testing.assert_allclose(panel.adv_cams, reference_cam(classifier, 'cam', panel.adv_images, y),
                             atol=1e-5)
  probs = tf.nn.softmax(classifier(x)).numpy()
  np.testing.assert_allclose(panel.probs, probs, atol=1e-6)
  assert np.abs(panel.adv_images - x).max() <= ATTACK.eps + 1e-6
  assert panel.adv_images.min() >= 0 and panel.adv_images.max() <= 1
  assert np.abs(panel.adv_images - x).max() > 0.05
  assert panel.attack == 'PGD-3 eps=0.3'
  # A fixed random start: the same weights give the same panel.
  again = figures.PanelMaker(classifier, 'cam', ATTACK)(x, y)
  np.testing.assert_array_equal(again.adv_images, panel.adv_images)


def test_panel_explains_prediction_and_eps_zero_is_clean():
  classifier = tiny_classifier()
  x, y = images()
  panel = figures.PanelMaker(classifier, 'cam', defense_lib.AttackConfig(eps=0.0, num_steps=2),
                             explain='prediction')(x, y)
  predicted = panel.predictions.astype(np.int32)
  np.testing.assert_allclose(panel.cams, reference_cam(classifier, 'cam', x, predicted), atol=1e-5)
  np.testing.assert_array_equal(panel.adv_images, x)
  np.testing.assert_allclose(panel.adv_probs, panel.probs, atol=1e-6)


def test_panel_maker_rejects_bad_arguments():
  classifier = tiny_classifier()
  with pytest.raises(ValueError, match='explain'):
    figures.PanelMaker(classifier, 'cam', ATTACK, explain='both')
  with pytest.raises(ValueError, match='not a layer'):
    figures.PanelMaker(classifier, 'nope', ATTACK)
  with pytest.raises(ValueError, match='labels'):
    figures.PanelMaker(classifier, 'cam', ATTACK)(*images()[:1], np.zeros([3]))


# ---------------------------------------------------------------------------------------------
# Figures.

def test_map_figures_are_png_images(tmp_path):
  classifier = tiny_classifier()
  x, y = images(3)
  panel = figures.PanelMaker(classifier, 'cam', ATTACK)(x, y)
  names = figures.class_names('mnist')
  image = read_png(figures.to_png(figures.panel_figure(panel, names, title='step 7')))
  assert image.shape[1] > image.shape[0] > 200  # 3 rows, one column per image
  other = figures.PanelMaker(tiny_classifier(1), 'cam', ATTACK)(x, y)
  path = figures.save_png(figures.comparison_figure({'a': panel, 'b': other}, names),
                          str(tmp_path / 'sub' / 'compare.png'))
  assert read_png(path).shape[0] > 200
  path = figures.save_png(figures.evolution_figure([(0, other), (5, panel)], names),
                          str(tmp_path / 'evolution.png'))
  assert read_png(path).shape[0] > 300
  with pytest.raises(ValueError, match='same images'):
    figures.comparison_figure({'a': panel, 'b': panel.take([0, 1])}, names)


def test_overlay_blends_jet_over_the_image():
  image = np.array([0.0, 1.0, 0.5], np.float32).reshape(1, 1, 3, 1)
  cam = np.array([1.0, 0.0, 0.5], np.float32).reshape(1, 1, 3)
  # matplotlib's jet: 1 -> dark red (0.5, 0, 0), 0 -> dark blue (0, 0, 0.5), 0.5 -> ~green.
  got = figures.overlay(image, cam)[0, 0]
  a = figures.OVERLAY_ALPHA
  np.testing.assert_allclose(got[0], a * np.array([0.5, 0.0, 0.0]), atol=1e-6)
  np.testing.assert_allclose(got[1], (1 - a) + a * np.array([0.0, 0.0, 0.5]), atol=1e-6)
  assert got[2, 1] > got[2, 0] and got[2, 1] > got[2, 2]


def test_panel_image_is_cheap_and_holds_the_enlarged_images():
  classifier = tiny_classifier()
  x, y = images(4)
  panel = figures.PanelMaker(classifier, 'cam', ATTACK)(x, y)
  started = time.time()
  image = figures.panel_image(panel, figures.class_names('mnist'), title='run - step 3', cell=56)
  assert time.time() - started < 20  # tens of ms on an idle core; generous for a loaded machine
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  # The first input, enlarged 2x (56 / 28), appears as an exact block of the mosaic.
  block = (np.repeat(np.repeat(x[0, ..., 0], 2, 0), 2, 1) * 255).astype(np.uint8)
  hits = np.argwhere(image[..., 0] == block[0, 0])
  found = any(np.array_equal(image[r:r + 56, c:c + 56, 0], block) for r, c in hits[:20000])
  assert found
  wider = figures.panel_image(panel.take([0, 1, 2, 3, 0, 1]), figures.class_names('mnist'),
                              cell=56)
  assert wider.shape[1] > image.shape[1] and wider.shape[0] < image.shape[0] + 1


def test_read_accuracy_layouts(tmp_path):
  single = tmp_path / 'eval.json'
  single.write_text(json.dumps({'eps': 0.3, 'accuracy': {'clean': 0.99, 'pgd20': 0.9}}))
  columns = tmp_path / 'columns.json'
  columns.write_text(json.dumps({'eps': [0.2, 0.1], 'accuracy': {'pgd20': [0.95, 0.97]}}))
  records = tmp_path / 'records.json'
  records.write_text(json.dumps({'results': [{'eps': 0.1, 'accuracy': {'fgsm': 0.8}},
                                             {'eps': 0.05, 'accuracy': {'fgsm': 0.9}}]}))
  assert figures.read_accuracy(str(single)) == {'clean': [(0.3, 0.99)], 'pgd20': [(0.3, 0.9)]}
  assert figures.read_accuracy(str(columns)) == {'pgd20': [(0.1, 0.97), (0.2, 0.95)]}
  assert figures.read_accuracy(str(records)) == {'fgsm': [(0.05, 0.9), (0.1, 0.8)]}
  assert figures.merge_accuracy([str(single), str(columns)])['pgd20'] == [
      (0.1, 0.97), (0.2, 0.95), (0.3, 0.9)]
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps({'eps': [0.1, 0.2], 'accuracy': {'pgd20': [0.9]}}))
  with pytest.raises(ValueError, match='as long as'):
    figures.read_accuracy(str(bad))
  bad.write_text(json.dumps({'accuracy': {'pgd20': 0.9}}))
  with pytest.raises(ValueError, match='"eps" and "accuracy"'):
    figures.read_accuracy(str(bad))


def test_curve_figures_are_png_images(tmp_path):
  curves = {'madry': {'clean': [(0.3, 0.99)], 'pgd20': [(0.1, 0.97), (0.3, 0.9)]},
            'aad': {'clean': [(0.3, 0.98)], 'pgd20': [(0.1, 0.98), (0.3, 0.93)],
                    'fgsm': [(0.3, 0.95)]}}
  read_png(figures.to_png(figures.robustness_figure(curves)))
  points = [figures.SweepPoint(f'r{i}', a, b, {'clean': 0.9 + i / 100, 'pgd20': 0.5 + i / 50})
            for i, (a, b) in enumerate([(0, 0), (0.001, 0.01), (0.01, 0.01), (0.1, 0.01),
                                        (0.01, 0.001), (0.01, 0.1)])]
  path = figures.save_png(figures.sensitivity_figure(points), str(tmp_path / 's.png'))
  read_png(path)
  with pytest.raises(ValueError, match='only clean'):
    figures.robustness_figure({'m': {'clean': [(0.3, 0.9)]}})


def test_sweep_point_reads_config_and_eval(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps({'defense': {'aad': True, 'alpha': 0.1,
                                                           'beta': 0.01}}))
  (run / 'eval.json').write_text(json.dumps({'eps': 0.3, 'accuracy': {'clean': 0.9}}))
  assert figures.sweep_point(str(run)) == figures.SweepPoint('run', 0.1, 0.01, {'clean': 0.9})
  (run / 'config.json').write_text(json.dumps({'defense': {'aad': False, 'alpha': 0.1}}))
  assert figures.sweep_point(str(run)).alpha == 0.0
  with pytest.raises(ValueError, match='not found'):
    figures.sweep_point(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# The binary, on a real (two-step) run.

def test_initial_classifier_is_the_runs_step_zero(tmp_path, shared_data_dir):
  config = training.TrainConfig(
      model_dir=str(tmp_path / 'run'), data_dir=str(shared_data_dir), batch_size=8, train_steps=1,
      learning_rate=1e-9, defense=defense_lib.DefenseConfig(defense='none'))
  arrays = data_lib.load_arrays('mnist', data_dir=str(shared_data_dir))
  training.train(config, arrays)
  trained, _, step = training.restore_classifier(training.load_config(config.model_dir))
  initial, _ = training.initial_classifier(config)
  assert step == 1
  for a, b in zip(trained.get_weights(), initial.get_weights()):
    np.testing.assert_allclose(a, b, atol=1e-6)  # one Adam step of 1e-9


def test_visualize_binary_writes_every_figure(tmp_path, shared_data_dir):
  run_a = tmp_path / 'madry'
  config = training.TrainConfig(
      model_dir=str(run_a), data_dir=str(shared_data_dir), batch_size=8, train_steps=2,
      checkpoint_every=1, defense=defense_lib.DefenseConfig(attack=ATTACK))
  training.train(config, data_lib.load_arrays('mnist', data_dir=str(shared_data_dir)))
  run_b = tmp_path / 'madry_aad'
  shutil.copytree(run_a, run_b)
  saved = json.loads((run_b / 'config.json').read_text())
  saved['defense'].update(aad=True, alpha=0.1)
  (run_b / 'config.json').write_text(json.dumps(saved))
  for run, acc in ((run_a, 0.5), (run_b, 0.6)):
    (run / 'eval.json').write_text(json.dumps({'eps': 0.3, 'accuracy': {'clean': 0.9,
                                                                        'pgd20': acc}}))
  out = tmp_path / 'figures'
  result = subprocess.run(
      [sys.executable, '-m', 'trainers.visualize', f'--model_dir={run_a}',
       f'--runs={run_a},{run_b}', f'--output_dir={out}', f'--data_dir={shared_data_dir}',
       '--figures=attention,evolution,compare,robustness,sensitivity', '--num_images=3',
       '--dpi=60'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ('attention', 'evolution', 'compare', 'robustness', 'sensitivity'):
    read_png(str(out / f'{name}.png'))
  # Evolution: step 0 (rebuilt initial weights) and the two kept checkpoints.
  assert read_png(str(out / 'evolution.png')).shape[1] > read_png(str(out / 'attention.png')
                                                                   ).shape[1] // 3
  bad = subprocess.run([sys.executable, '-m', 'trainers.visualize', '--figures=attention'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and 'need --model_dir' in bad.stderr
