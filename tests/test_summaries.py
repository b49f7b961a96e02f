"""Tests for aad_tf.summaries: scalars, activation-map images and hparams in TensorBoard."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import figures
from aad_tf import summaries
from aad_tf import training


def read_events(log_dir):
  """tag -> [(step, value)] of every tensor summary, and the plugin of each tag."""
  acc = event_accumulator.EventAccumulator(log_dir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  events = {tag: [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
            for tag in acc.Tags()['tensors']}
  plugins = {tag: acc.SummaryMetadata(tag).plugin_data.plugin_name for tag in events}
  return events, plugins


def test_flatten_hparams():
  nested = {'lr': 0.1, 'defense': {'aad': True, 'kappa': 'mean', 'attack': {'eps': 0.3}},
            'augment': None, 'shape': (1, 2)}
  assert summaries.flatten_hparams(nested) == {
      'lr': 0.1, 'defense.aad': True, 'defense.kappa': 'mean', 'defense.attack.eps': 0.3,
      'augment': 'none', 'shape': '(1, 2)'}


def test_scalars_are_window_means_at_the_global_step(tmp_path):
  """Keras logs running means since the fit call began; the summary is the mean since the
  last write, stamped with the optimizer's step (which continues across fit calls)."""
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile(optimizer=keras.optimizers.SGD(0.25), loss='mse')
  model.optimizer.build(model.trainable_variables)
  callback = summaries.TrainSummaries(str(tmp_path), scalar_every=3)
  callback.set_model(model)
  losses = np.array([5.0, 4.0, 3.0, 1.0, 2.0, 6.0, 7.0])
  callback.on_train_begin()
  for epoch, (start, stop) in enumerate([(0, 5), (5, 7)]):  # two fit calls: steps 1-5, 6-7
    callback.on_epoch_begin(epoch)
    for batch, step in enumerate(range(start, stop)):
      model.optimizer.iterations.assign(step + 1)
      running = losses[start:step + 1].mean()
      callback.on_train_batch_end(batch, {'loss': tf.constant(running, tf.float32)})
    callback.on_train_end()
  callback.close()
  events, plugins = read_events(str(tmp_path))
  loss = [(step, float(v)) for step, v in events['train/loss']]
  # step 3: mean(5, 4, 3); step 5 (end of the first fit): mean(1, 2); step 6: mean(6);
  # step 7 (end): mean(7).
  np.testing.assert_allclose([v for _, v in loss], [4.0, 1.5, 6.0, 7.0], rtol=1e-6)
  assert [s for s, _ in loss] == [3, 5, 6, 7]
  assert [float(v) for _, v in events['train/learning_rate']] == [0.25] * 4
  assert plugins['train/loss'] == 'scalars'


def test_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match='scalar_every'):
    summaries.TrainSummaries(str(tmp_path), scalar_every=0)
  with pytest.raises(ValueError, match='give both'):
    summaries.TrainSummaries(str(tmp_path), images=np.zeros([1, 28, 28, 1]))
  with pytest.raises(ValueError, match=r'\[N, H, W, C\]'):
    summaries.TrainSummaries(str(tmp_path), images=np.zeros([2, 28, 28]), labels=[0, 1])


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, shared_data_dir):
  """A real AAD run of 4 steps, then resumed to 6, with a 4-image panel every 2 steps."""
  model_dir = str(tmp_path_factory.mktemp('run') / 'mnist_aad')
  arrays = data_lib.load_arrays('mnist', data_dir=str(shared_data_dir))
  x_test, y_test = arrays.split('test')
  index = figures.pick_examples(y_test, 4)
  attack = defense_lib.AttackConfig(eps=0.3, step_size=0.1, num_steps=2)
  for steps in (4, 6):
    config = training.TrainConfig(
        model_dir=model_dir, batch_size=8, train_steps=steps, log_every=2,
        defense=defense_lib.DefenseConfig(aad=True, attack=attack))
    callback = summaries.TrainSummaries(
        summaries.log_dir(model_dir), scalar_every=2, images=x_test[index],
        labels=y_test[index], class_names=figures.class_names('mnist'), image_every=2,
        hparams=config.to_json(), diagnostic_images=arrays.x_train[:8],
        diagnostic_labels=arrays.y_train[:8])
    training.train(config, arrays, callbacks=[callback])
    callback.close()
  summary = callback.aad_summary()  # of the resumed invocation: steps 6 only
  assert [h['step'] for h in summary['history']] == [6]
  assert summary['mean']['grad_ratio_pres'] == summary['history'][0]['grad_ratio_pres'] > 0
  summaries.write_eval_scalars(summaries.log_dir(model_dir), 6, {'clean': 0.5, 'pgd20': 0.25})
  return model_dir


def test_event_files_hold_scalars_images_and_hparams(trained_run):
  events, plugins = read_events(summaries.log_dir(trained_run))
  for term in ('loss', 'class_loss', 'rect_loss', 'pres_loss', 'clean_acc', 'adv_acc',
               'learning_rate', 'steps_per_sec'):
    assert [s for s, _ in events[f'train/{term}']] == [2, 4, 6], term
    assert plugins[f'train/{term}'] == 'scalars'
  assert [s for s, _ in events[summaries.IMAGE_TAG]] == [0, 2, 4, 6]  # resumed at 4, not 0
  assert plugins[summaries.IMAGE_TAG] == 'images'
  width, height, png = events[summaries.IMAGE_TAG][-1][1]
  image = np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))
  assert image.shape == (int(height), int(width), 3) and image.std() > 10
  assert {float(v) for _, v in events['eval/pgd20']} == {0.25}
  for tag in ('grad_ratio_rect', 'grad_ratio_pres', 'cos_rect', 'map_mean', 'map_max',
              'area_fraction', 'empty_area_fraction', 'inference_gap'):
    assert [s for s, _ in events[f'aad/{tag}']] == [2, 4, 6], tag
    assert all(np.isfinite(float(v)) for _, v in events[f'aad/{tag}'])
  assert all(float(v) > 0 for _, v in events['aad/grad_ratio_rect'])
  assert any(p == 'hparams' for p in plugins.values())
  for _, acc in events['train/clean_acc'] + events['train/adv_acc']:
    assert 0.0 <= float(acc) <= 1.0


def test_a_large_inference_gap_warns_and_names_the_remedy():
  assert summaries.inference_gap_warning(100, 0.0) is None
  assert summaries.inference_gap_warning(100, summaries.INFERENCE_GAP_WARNING) is None
  message = summaries.inference_gap_warning(100, 0.3)
  assert 'step 100' in message and '30% fewer' in message
  assert '--attention_mode=batch' in message


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_tensorboard_server_lists_the_image_tags(trained_run):
  port = free_port()
  server = subprocess.Popen(
      [sys.executable, '-m', 'tensorboard.main', f'--logdir={trained_run}', '--host=127.0.0.1',
       f'--port={port}', '--load_fast=false', '--reload_interval=1'],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline, tags, error = time.time() + 90, {}, None
    while time.time() < deadline and not tags.get('tensorboard', {}).get(summaries.IMAGE_TAG):
      if server.poll() is not None:
        pytest.fail(f'tensorboard exited: {server.stderr.read().decode()[-2000:]}')
      try:
        url = f'http://127.0.0.1:{port}/data/plugin/images/tags'
        with urllib.request.urlopen(url, timeout=5) as response:
          tags = json.load(response)
      except OSError as e:  # not listening yet
        error = e
      time.sleep(1)
    assert summaries.IMAGE_TAG in tags.get('tensorboard', {}), (tags, error)
    url = f'http://127.0.0.1:{port}/data/plugin/scalars/tags'
    with urllib.request.urlopen(url, timeout=5) as response:
      assert 'train/adv_acc' in json.load(response)['tensorboard']
  finally:
    os.kill(server.pid, 15)
    server.wait(timeout=30)
