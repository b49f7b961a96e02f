"""aad_tf.data.registry: adding a dataset is one entry (issue 16, item 2).

A toy dataset is registered in this file alone (8x8x1 images, 3 named classes, its own evaluation
eps), then trained by trainers.main, evaluated by trainers.evaluate and drawn by
trainers.visualize, each in a subprocess that imports this file to register it. The toy's eps
and class names differ from every built-in dataset's, so the outputs show that each binary read
the registry entry.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from aad_tf import data
from aad_tf import figures
from aad_tf import training

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = 'toy_registry'
TOY_CLASSES = ('ring', 'bar', 'dot')
TOY_EVAL_EPS = 0.0625  # no built-in dataset has it
TOY_SHAPE = (8, 8, 1)


# --- The recipe: a loader and its registry entry. --------------------------------------------

def load_toy(info, *, data_dir, source, download) -> data.Arrays:
  """Synthetic uint8 images: class c is a bright pattern c on noise (no files read)."""
  del data_dir, source, download
  rng = np.random.default_rng(0)
  patterns = np.zeros((3, 8, 8), np.float32)
  patterns[0, 1:7, 1:7], patterns[0, 2:6, 2:6] = 1.0, 0.0  # ring
  patterns[1, :, 3:5] = 1.0  # bar
  patterns[2, 3:5, 3:5] = 1.0  # dot

  def split(num):
    labels = np.arange(num) % info.num_classes
    images = 0.7 * patterns[labels] + 0.3 * rng.random((num, 8, 8), np.float32)
    return np.round(images * 255).astype(np.uint8)[..., None], labels.astype(np.int32)

  x_train, y_train = split(info.num_train)
  x_test, y_test = split(info.num_test)
  return data.Arrays(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def register() -> None:
  data.register_dataset(TOY, image_shape=TOY_SHAPE, num_classes=3, num_train=48, num_test=24,
                        eval_eps=TOY_EVAL_EPS, class_names=TOY_CLASSES,
                        description='Three synthetic 8x8 patterns (tests only).')(load_toy)


@pytest.fixture
def toy():
  register()
  yield data.get_info(TOY)
  data.unregister_dataset(TOY)
  data.clear_cache()


# --- The entry, read back. --------------------------------------------------------------------

def test_registered_entry_holds_every_fact(toy):
  assert TOY in data.available_datasets()
  assert (toy.image_shape, toy.num_classes, toy.eval_eps) == (TOY_SHAPE, 3, TOY_EVAL_EPS)
  assert toy.class_names == TOY_CLASSES and not toy.streamed and not toy.analyzable
  assert figures.class_names(TOY) == TOY_CLASSES
  arrays = data.load_arrays(TOY)
  assert arrays.x_train.shape == (48, *TOY_SHAPE) and arrays.num_test == 24
  with pytest.raises(ValueError, match='already registered'):
    register()


def test_unregistered_and_malformed_entries_fail_clearly(toy):
  data.unregister_dataset(TOY)
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.get_info(TOY)
  # An entry whose loader disagrees with its image shape is refused when loaded.
  data.register_dataset(TOY, image_shape=(9, 9, 1), num_classes=3, num_train=48, num_test=24,
                        eval_eps=TOY_EVAL_EPS)(load_toy)
  with pytest.raises(ValueError, match='registry says'):
    data.load_arrays(TOY)
  with pytest.raises(ValueError, match='class names'):
    data.DatasetInfo(name='bad', image_shape=(8, 8, 1), num_classes=3, num_train=1, num_test=1,
                     eval_eps=0.1, class_names=('a', 'b'))


def test_built_in_entries():
  """The facts that used to live in five tables (data, evaluation, figures, analyze, benchmarks)."""
  mnist, cifar = data.get_info('mnist'), data.get_info('cifar10')
  boxed, imagenet = data.get_info('boxed_mnist'), data.get_info('imagenet')
  assert [info.eval_eps for info in (mnist, cifar, boxed, imagenet)] == [0.3, 8 / 255, 0.3,
                                                                        16 / 255]
  # The analysis's StepLL budget is a different quantity from the evaluation's.
  assert (boxed.analysis_stepll_eps, imagenet.analysis_stepll_eps) == (0.1, 16 / 255)
  assert (boxed.analysis_segmentation, imagenet.analysis_segmentation) == ('slic', 'quickshift')
  assert not mnist.analyzable and not cifar.analyzable
  assert cifar.class_names[0] == 'airplane' and mnist.class_names == tuple('0123456789')
  assert imagenet.streamed and imagenet.augmentations == (None, 'inception_crop_flip')
  assert (boxed.image_shape, boxed.num_train, boxed.num_test) == ((64, 64, 1), 12000, 2000)


def test_get_info():
  info = data.get_info('cifar10')
  assert (info.image_shape, info.num_classes, info.num_train, info.num_test) == (
      (32, 32, 3), 10, 50000, 10000)
  assert data.get_info('mnist').image_shape == (28, 28, 1)
  assert data.get_info('imagenet').image_shape == (224, 224, 3)
  with pytest.raises(ValueError, match=r"valid names: \[.*'cifar10'.*'mnist'"):
    data.get_info('svhn')


def test_training_data_is_the_one_entry_point(toy, tmp_path):
  config = training.TrainConfig(model_dir=str(tmp_path), dataset=TOY, batch_size=12,
                                train_steps=2)
  source = data.training_data(config)
  assert source.arrays is not None and (source.num_train, source.num_eval) == (48, 24)
  assert data.training_data(config, source) is source
  x, y = next(iter(source.eval_dataset(batch_size=5, num_examples=10)))
  assert x.shape == (5, *TOY_SHAPE) and y.numpy().tolist() == [0, 1, 2, 0, 1]


# --- Trained, evaluated and visualised by the binaries. ---------------------------------------

# Registers the toy dataset, records the class names the figures are drawn with, then runs the
# binary as `python -m`.
RUNNER = """
import runpy, sys
sys.path.insert(0, {tests!r})
import test_data_registry
test_data_registry.register()
from aad_tf import figures
panel_figure = figures.panel_figure
def spy(panel, names, **kwargs):
  print('class names:', ','.join(names), flush=True)
  return panel_figure(panel, names, **kwargs)
figures.panel_figure = spy
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def run_with_toy(binary, *args):
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
  code = RUNNER.format(tests=str(ROOT / 'tests'))
  result = subprocess.run([sys.executable, '-c', code, binary, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_toy_dataset_trains_evaluates_and_is_visualised(tmp_path):
  run = tmp_path / 'toy_run'
  run_with_toy('trainers.main', f'--dataset={TOY}', '--model=lenet', f'--model_dir={run}',
               '--train_steps=3', '--batch_size=12', '--train_num_steps=1', '--train_eps=0.1',
               '--eval_examples=24', '--eval_batch_size=24', '--eval_attacks=clean,fgsm',
               '--summary_images=3', '--noexport')
  closing = json.loads((run / 'eval.json').read_text())
  assert closing['dataset'] == TOY and closing['eps'] == TOY_EVAL_EPS  # the entry's eval_eps
  assert closing['num_examples'] == 24 and closing['train']['final_step'] == 3
  assert json.loads((run / 'config.json').read_text())['dataset'] == TOY

  run_with_toy('trainers.evaluate', f'--model_dir={run}', '--attacks=clean,fgsm',
               '--eval_examples=24', '--batch_size=24', '--nodiagnostics')
  suite = json.loads((run / 'robustness.json').read_text())
  assert suite['dataset'] == TOY and suite['eps'] == TOY_EVAL_EPS
  assert set(suite['accuracy']) == {'clean', 'fgsm', 'worst_case'}

  drawn = run_with_toy('trainers.visualize', f'--model_dir={run}', '--figures=attention',
                       '--num_images=3')
  assert (run / 'figures' / 'attention.png').stat().st_size > 0
  assert f'class names: {",".join(TOY_CLASSES)}' in drawn.stdout  # the entry's class names
