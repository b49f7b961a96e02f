"""Every Table 6 flagfile parses, holds the paper's settings, and builds its model and input
pipeline on tiny fake inputs, without downloading anything."""

import dataclasses
import os
import pathlib
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from aad_tf import data as data_lib
from aad_tf import training
from aad_tf.models import imagenet as imagenet_models
from trainers import main

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_imagenet  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
DATASETS = ('mnist', 'cifar10', 'imagenet')
ROWS = {'raw': ('none', False), 'madry': ('madry', False), 'madry_aad': ('madry', True),
        'alp': ('alp', False), 'alp_aad': ('alp', True)}
PAPER = {  # Sec. 5.1 and Table 6
    'mnist': dict(model='lenet', batch_size=100, learning_rate=1e-3, epochs=5, train_eps=0.3,
                  train_step_size=0.01, train_num_steps=40, eval_eps=0.3),
    'cifar10': dict(model='resnet9', batch_size=100, learning_rate=1e-4, epochs=200,
                    train_eps=8 / 255, train_step_size=2 / 255, train_num_steps=7,
                    eval_eps=8 / 255, augment='pad_crop_flip'),
    'imagenet': dict(model='resnet50', batch_size=128, learning_rate=0.045, lr_decay_rate=0.94,
                     lr_decay_epochs=2, eval_eps=16 / 255, augment='inception_crop_flip'),
}
IMAGENET_SIZE = 64


@pytest.fixture(scope='module', autouse=True)
def main_flags():
  if 'deterministic' not in FLAGS:  # trainers.main's flags, once per process
    main.define_flags()
  yield
  FLAGS.unparse_flags()


@pytest.fixture(scope='module')
def fake_imagenet_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagenet')
  manual = fake_imagenet.write_manual_dir(str(root / 'manual'))
  data_lib.imagenet_builder(str(root / 'tfds'), manual_dir=manual)
  return str(root / 'tfds')


@pytest.fixture(scope='module')
def backbone_weights(tmp_path_factory):
  """Backbone weights standing in for the downloaded ImageNet ones (saved from a fresh build)."""
  keras.utils.set_random_seed(7)
  model = imagenet_models.build_resnet50((IMAGENET_SIZE, IMAGENET_SIZE, 3), 1000)
  backbone = keras.Model(model.input,
                         model.get_layer(imagenet_models.RESNET50_GRADCAM_LAYER).output)
  path = str(tmp_path_factory.mktemp('weights') / 'resnet50.weights.h5')
  backbone.save_weights(path)
  return path, model.get_layer('conv1_conv').kernel.numpy()


def parse(name, tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)  # nested --flagfile paths are relative to the working directory
  FLAGS.unparse_flags()
  FLAGS(['main', f'--flagfile=flags/{name}.cfg', f'--model_dir={tmp_path / "run"}'])
  return main.config_from_flags()


def fake_arrays(info, num=16):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(num, *info.image_shape)).astype(np.float32)
  y = rng.integers(0, info.num_classes, num).astype(np.int32)
  return data_lib.Arrays(x_train=x, y_train=y, x_test=x, y_test=y)


def test_all_fifteen_rows_exist():
  for dataset in DATASETS:
    assert (ROOT / 'flags' / f'{dataset}_base.cfg').exists()
    for row in ROWS:
      text = (ROOT / 'flags' / f'{dataset}_{row}.cfg').read_text()
      assert f'--flagfile=flags/{dataset}_base.cfg' in text


@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('row', ROWS)
def test_flagfile_parses_and_builds(dataset, row, tmp_path, monkeypatch, fake_imagenet_dir,
                                    backbone_weights):
  config = parse(f'{dataset}_{row}', tmp_path, monkeypatch)
  # The paper's settings.
  defense_name, aad = ROWS[row]
  assert (config.dataset, config.defense.defense, config.defense.aad) == (dataset, defense_name,
                                                                          aad)
  paper = PAPER[dataset]
  attack = config.defense.attack
  got = dict(model=config.model, batch_size=config.batch_size,
             learning_rate=config.learning_rate, epochs=config.epochs, train_eps=attack.eps,
             train_step_size=attack.step_size, train_num_steps=attack.num_steps,
             eval_eps=main.eval_eps(), augment=config.augment,
             lr_decay_rate=config.lr_decay_rate, lr_decay_epochs=config.lr_decay_epochs)
  for key, want in paper.items():
    assert got[key] == pytest.approx(want), key
  assert (config.defense.alpha, config.defense.beta, config.defense.kappa) == (0.01, 0.01,
                                                                               'mean')

  # Build the model and one batch of the input pipeline on tiny fake inputs.
  small = dict(batch_size=2, model_dir=str(tmp_path / 'run'))
  arrays = None
  if dataset == 'imagenet':
    path, conv1 = backbone_weights
    assert config.pretrained_weights  # the paper fine-tunes a pretrained ResNet50
    # The real weights are not here; the headline row loads stand-in ones from a local file.
    small.update(data_dir=fake_imagenet_dir, image_size=IMAGENET_SIZE,
                 pretrained_weights=path if row == 'alp_aad' else None)
  else:
    arrays = fake_arrays(config.info)
  config = dataclasses.replace(config, **small)
  source = training.TrainingData(config, arrays)
  model = training.build_model(config, source.num_train)
  x, y = next(iter(source.distributed(tf.distribute.get_strategy(), start_step=0,
                                      num_steps=1)))
  assert x.shape == (2, *config.image_shape) and y.shape == (2,)
  logits = model.classifier(x, training=False)
  assert logits.shape == (2, config.info.num_classes)
  assert np.isfinite(logits.numpy()).all()
  if dataset == 'imagenet' and row == 'alp_aad':
    np.testing.assert_array_equal(model.classifier.get_layer('conv1_conv').kernel.numpy(), conv1)


CPU_ROWS = {'mnist': ROWS, 'cifar10': ('madry', 'madry_aad')}  # the rows docs/results trains


@pytest.mark.parametrize('dataset', CPU_ROWS)
def test_cpu_budget_rows_share_one_budget(dataset, tmp_path, monkeypatch):
  """The `*_cpu.cfg` rows of a dataset differ only in the defence (docs/results compares them)."""
  configs = {row: parse(f'{dataset}_{row}_cpu', tmp_path, monkeypatch) for row in CPU_ROWS[dataset]}
  for row, config in configs.items():
    assert (config.defense.defense, config.defense.aad) == ROWS[row]
  def budget(config):
    without_defence = dataclasses.replace(
        config.defense, defense='none', aad=False, alp_weight=0.0)
    return dataclasses.replace(config, defense=without_defence)
  budgets = {row: budget(config) for row, config in configs.items()}
  first = next(iter(budgets.values()))
  for row, value in budgets.items():
    assert value == first, row
  # A real reduced budget, not the paper's (that is what the *_cpu suffix promises).
  attack = first.defense.attack
  assert attack.num_steps < PAPER[dataset]['train_num_steps']
  assert attack.step_size == pytest.approx(2.5 * attack.eps / attack.num_steps)


def test_quickstart_trains_at_the_full_eps_it_is_evaluated_at(tmp_path, monkeypatch):
  """Issue 13: the quickstart used to end inside the eps warm-up (PGD-20 0.00%, read as 'the
  defense does not work'); its last steps must train at the eps the evaluation attacks with."""
  config = parse('quickstart', tmp_path, monkeypatch)
  attack = config.defense.attack
  assert (config.defense.defense, config.defense.aad) == ('madry', True)
  assert attack.warmup_steps < config.total_steps()
  assert config.total_steps() - attack.warmup_steps >= config.total_steps() // 2
  assert attack.eps == pytest.approx(main.eval_eps()) == pytest.approx(0.3)
