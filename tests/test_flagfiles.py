"""Every Table 6 flagfile parses, holds the paper's settings, and builds its model and input
pipeline on tiny fake inputs, without downloading anything."""

import dataclasses
import importlib
import inspect
import os
import pathlib
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app
from absl import flags

from aad_tf import data as data_lib
from aad_tf import training
from aad_tf.models import imagenet as imagenet_models
from trainers import flagfiles
from trainers import main
from trainers import train_flags

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
  return train_flags.config_from_flags()


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
             eval_eps=config.eval_eps, augment=config.augment,
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
  source = data_lib.TrainingData(config, arrays)
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
    without_defence = dataclasses.replace(config.defense, defense='none', aad=False)
    return dataclasses.replace(config, defense=without_defence)
  budgets = {row: budget(config) for row, config in configs.items()}
  first = next(iter(budgets.values()))
  for row, value in budgets.items():
    assert value == first, row
  # A real reduced budget, not the paper's (that is what the *_cpu suffix promises).
  attack = first.defense.attack
  assert attack.num_steps < PAPER[dataset]['train_num_steps']
  if attack.num_steps == 1:  # FGSM with a random start: Wong et al.'s step of 1.25 eps
    assert attack.random_init and attack.step_size == pytest.approx(1.25 * attack.eps)
  else:  # PGD-k at Madry et al.'s 2.5 eps / k
    assert attack.step_size == pytest.approx(2.5 * attack.eps / attack.num_steps)


def test_resnet_source_picks_the_resnet50_builder(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  FLAGS.unparse_flags()
  FLAGS(['main', '--flagfile=flags/imagenet_alp_aad.cfg', f'--model_dir={tmp_path}',
         '--resnet_source=keras_applications'])
  assert train_flags.config_from_flags().model == 'resnet50_keras_applications'
  FLAGS.unparse_flags()
  FLAGS(['main', '--flagfile=flags/imagenet_alp_aad.cfg', f'--model_dir={tmp_path}'])
  assert train_flags.config_from_flags().model == 'resnet50'  # keras-cv stays the default
  FLAGS.unparse_flags()
  FLAGS(['main', '--model=lenet', '--resnet_source=keras_applications',
         f'--model_dir={tmp_path}'])
  with pytest.raises(app.UsageError, match='--resnet_source applies to --model=resnet50'):
    train_flags.config_from_flags()


# --- flagfiles by name (trainers/flagfiles.py) ---------------------------------


@pytest.mark.parametrize('name', sorted(p.name for p in (ROOT / 'flags').glob('*.cfg')))
def test_flagfile_by_name_from_elsewhere_expands_as_absl_does_from_the_root(name, tmp_path,
                                                                            monkeypatch):
  monkeypatch.chdir(ROOT)
  want = FLAGS.read_flags_from_files([f'--flagfile=flags/{name}', '--seed=3'])
  monkeypatch.chdir(tmp_path)  # no flags/ here: the name and nested includes resolve to the package
  got = flagfiles.expand(['prog', f'--flagfile={name}', '--seed=3'])
  assert got == ['prog', *want]
  assert flagfiles.expand(['prog', f'--flagfile=flags/{name}', '--seed=3']) == got
  assert len(want) > 1


def test_flagfile_paths_that_exist_win_over_packaged_ones(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'flags').mkdir()
  (tmp_path / 'flags' / 'mnist_base.cfg').write_text('# a local base\n--seed=9\n')
  (tmp_path / 'mine.cfg').write_text('--flagfile=mnist_madry.cfg\n\n// comment\n  --batch_size=7  \n')
  got = flagfiles.expand(['prog', '--flagfile', 'mine.cfg', '--', '--flagfile=x.cfg'])
  # mnist_madry.cfg is the packaged one; its nested flags/mnist_base.cfg is the local file.
  assert got[:2] == ['prog', '--seed=9'] and '--defense=madry' in got
  assert '--model=lenet' not in got  # the packaged base was not read
  assert got[-3:] == ['--batch_size=7', '--', '--flagfile=x.cfg']  # nothing expanded after --


def test_missing_flagfile_names_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(flags.CantOpenFlagFileError, match='imagenet_nope.cfg.*packaged flagfile of '
                     + str(ROOT / 'flags')):
    flagfiles.expand(['prog', '--flagfile=imagenet_nope.cfg'])
  (tmp_path / 'loop.cfg').write_text('--flagfile=loop.cfg\n--seed=1\n')
  assert flagfiles.expand(['prog', '--flagfile=loop.cfg']) == ['prog', '--seed=1']


def test_binary_takes_a_flagfile_by_name_outside_the_checkout(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'trainers.main', '--flagfile=imagenet_alp_aad.cfg', '--helpshort'],
      cwd=tmp_path, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='',
                             PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr[-2000:]  # absl's exit status after help
  assert 'FATAL' not in result.stderr and '--resnet_source' in result.stdout
  missing = subprocess.run(
      [sys.executable, '-m', 'trainers.main', '--flagfile=no_such.cfg'], cwd=tmp_path,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=str(ROOT)), capture_output=True,
      text=True, timeout=120)
  # One line and the usage status (trainers/cli.py), naming the flagfile.
  assert missing.returncode == 2 and 'no_such.cfg' in missing.stderr
  assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr


SCRIPTS = {'aad-train': 'main', 'aad-evaluate': 'evaluate', 'aad-export': 'export',
           'aad-visualize': 'visualize', 'aad-analyze': 'analyze'}


def test_console_scripts_are_the_binaries_run_functions():
  text = (ROOT / 'setup.py').read_text()
  for script, module in SCRIPTS.items():
    assert f"'{script} = trainers.{module}:run'" in text
    binary = importlib.import_module(f'trainers.{module}')
    assert callable(binary.run) and 'flagfiles.run(main, define_flags)' in inspect.getsource(
        binary.run)


# The flags a user needs, which --help (not only --helpfull) must list (issue 16).
KEY_FLAGS = {
    'main': ['data_dir', 'model_dir', 'dataset', 'seed', 'train_steps', 'eval_examples',
             'eval_eps', 'defense', 'aad', 'batch_size', 'allow_config_change', 'trades_beta'],
    'evaluate': ['model_dir', 'saved_model', 'data_dir', 'dataset', 'seed', 'eval_examples',
                 'attacks', 'eps', 'weights'],
    'export': ['model_dir', 'export_dir', 'source', 'checkpoint'],
    'visualize': ['model_dir', 'runs', 'figures', 'data_dir', 'output_dir', 'weights'],
    'analyze': ['model_dir', 'data_dir', 'dataset', 'eps', 'output_dir', 'seed'],
}


@pytest.mark.parametrize('binary', sorted(KEY_FLAGS))
def test_help_lists_the_flags_a_user_needs(binary):
  result = subprocess.run(
      [sys.executable, '-m', f'trainers.{binary}', '--help'], cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES=''),
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr[-2000:]  # absl's exit status after help
  listed = set(re.findall(r'^  --(?:\[no\])?(\w+)', result.stdout, re.MULTILINE))
  assert set(KEY_FLAGS[binary]) <= listed, sorted(set(KEY_FLAGS[binary]) - listed)
  assert 'verbosity' not in listed and 'test_tmpdir' not in listed  # absl's: --helpfull


@pytest.mark.skipif(shutil.which('aad-train') is None, reason='aad-train is not installed')
def test_installed_console_script_helps_as_python_m_does(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  outputs = []
  for command in ([shutil.which('aad-train')], [sys.executable, '-m', 'trainers.main']):
    result = subprocess.run([*command, '--flagfile=imagenet_alp_aad.cfg', '--helpshort'],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and 'FATAL' not in result.stderr, result.stderr[-2000:]
    # Identical but for the line naming the module that defines the flags.
    outputs.append([line for line in result.stdout.splitlines() if not line.endswith(':')
                    or line.startswith(' ')])
  assert outputs[0] == outputs[1] and any('--resnet_source' in line for line in outputs[0])


def test_quickstart_trains_at_the_full_eps_it_is_evaluated_at(tmp_path, monkeypatch):
  """Issue 13: the quickstart used to end inside the eps warm-up (PGD-20 0.00%, read as 'the
  defense does not work'); its last steps must train at the eps the evaluation attacks with."""
  config = parse('quickstart', tmp_path, monkeypatch)
  attack = config.defense.attack
  assert (config.defense.defense, config.defense.aad) == ('madry', True)
  assert attack.warmup_steps < config.total_steps()
  assert config.total_steps() - attack.warmup_steps >= config.total_steps() // 2
  assert attack.eps == pytest.approx(config.eval_eps) == pytest.approx(0.3)


def test_screen_variant_differs_from_the_paper_row_only_in_aad_scaling_and_weights(
    tmp_path, monkeypatch):
  paper = parse('mnist_madry_aad', tmp_path, monkeypatch)
  variant = parse('mnist_madry_aad_screen_best', tmp_path, monkeypatch)
  assert (variant.defense.gradcam_normalize, variant.defense.alpha, variant.defense.beta) == (
      'rms_softmax', 0.0, 1.0)
  assert (paper.defense.gradcam_normalize, paper.defense.attention_mode) == ('none', 'inference')
  same = dataclasses.replace(variant.defense, gradcam_normalize='none', alpha=0.01, beta=0.01)
  assert dataclasses.replace(variant, defense=same) == paper
