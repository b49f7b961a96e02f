r"""The paper's Sec. 3 attention data analysis of a trained model on images with boxes.

  python -m trainers.analyze --model_dir=/tmp/boxed_raw --data_dir=../shared/data \
      --output_dir=/tmp/boxed_raw/analysis
  python -m trainers.analyze --model_dir=/tmp/boxed_raw \
      --compare_model_dirs=/tmp/boxed_madry,/tmp/boxed_madry_aad --data_dir=../shared/data
  python -m trainers.analyze --model=inception_v3 --dataset=imagenet --imagenet_dir=/data/imagenet \
      --pretrained_weights=/data/inception_v3_weights_tf_dim_ordering_tf_kernels.h5 \
      --num_examples=5000 --output_dir=/tmp/inception_analysis

Keeps the correctly classified images (I_att), attacks each with StepLL at --eps, splits them into
I_succeed / I_fail and writes to --output_dir: analysis.json (every table, per model),
analysis.md (the tables in the paper's layout), records.npz (per-example values) and figures
(fig1_gradcam.png, fig2_rounds.png, fig3_lime.png, fig_compare.png). See aad_tf/analysis/ for
the definitions (grids, IoU, kappa) and aad_tf/data/imagenet_boxes.py for the ImageNet file layout.

A --model_dir is a run of trainers.main on images with boxes (boxed_mnist): its config.json names
the dataset and backbone; the weights are the newer of export/model.keras and the latest
checkpoint (aad_tf/runs.py). With --model,
--pretrained_weights is a whole .keras model or a weights file (the ImageNet backbones load it
themselves: a whole InceptionV3 as in the paper's analysis; resnet50's file holds only its
backbone, so it needs a trained run instead). --dataset=imagenet reads the validation images and
box XML files from --imagenet_dir (layout: aad_tf/data/imagenet_boxes.py), not the TFDS pipeline.
"""

import inspect
import json
import os

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from aad_tf import analysis
from aad_tf import data as data_lib
from aad_tf.data import boxed_mnist
from aad_tf.data import imagenet_boxes
from aad_tf import models
from aad_tf import runs
from aad_tf import training
from trainers import flagfiles

FLAGS = flags.FLAGS

# The datasets with bounding boxes; each registry entry holds its analysis_stepll_eps and
# analysis_segmentation (the defaults of --eps and --lime_segmentation; aad_tf/data/catalog.py).
DATASETS = tuple(name for name in data_lib.available_datasets()
                 if data_lib.get_info(name).analyzable)


def define_flags() -> None:
  flags.DEFINE_string('model_dir', None, 'A trainers.main run to analyse (config.json + weights).')
  flags.DEFINE_enum('model', None, list(models.available_models()),
                    'Backbone to build when no --model_dir is given.')
  flags.DEFINE_string('pretrained_weights', None,
                      'Weights for --model: a .weights.h5 file or a whole .keras model.')
  flags.DEFINE_list('compare_model_dirs', [],
                    'More trainers.main runs analysed on the same images (Sec. 5.5 view).')
  flags.DEFINE_enum('dataset', None, list(DATASETS),
                    "Images with boxes (default: the --model_dir's dataset).")
  flags.DEFINE_string('data_dir', None, 'Directory with mnist.npz (boxed_mnist).')
  flags.DEFINE_enum('data_source', 'auto', ['auto', 'npz', 'tfds'], 'Where to read MNIST.')
  flags.DEFINE_string('imagenet_dir', None,
                      'ImageNet directory with val/, val_boxes/, synsets.txt (imagenet).')
  flags.DEFINE_integer('image_size', None,
                       'ImageNet input side for --model (default: 299 inception_v3, else 224).',
                       lower_bound=1)
  flags.DEFINE_integer('num_examples', None,
                       'Analyse the first N images (default: the boxed_mnist test split, 2000; '
                       'all annotated ImageNet images).', lower_bound=1)
  flags.DEFINE_float('eps', None, "StepLL eps (default: the dataset's analysis_stepll_eps).",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_enum('kappa_mode', 'equal_area', list(analysis.KAPPA_MODES),
                    'Att threshold for Tables 1-2: equal_area (the paper), mean, or fixed.')
  flags.DEFINE_float('kappa', 0.5, 'Fixed kappa on max-normalised maps (--kappa_mode=fixed).',
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('grid', 8, 'Analysis grid side (the paper: 8); 0 keeps the native grid.',
                       lower_bound=0)
  flags.DEFINE_list('cells', ['5', '10', '20', '30'], 'Table 3: top #cell values.')
  flags.DEFINE_enum('adv_cam_label', 'true', list(analysis.ADV_CAM_LABELS),
                    'Grad-CAM of x_adv for the true label or the adversarial prediction.')
  flags.DEFINE_list('lime_features', ['8', '10'],
                    'Tables 4-5: LIME features kept (empty: skip LIME).')
  flags.DEFINE_integer('lime_examples', 100, 'LIME explains the first N images of I_att.',
                       lower_bound=0)
  flags.DEFINE_integer('lime_samples', 1000, "LIME's samples per explanation.", lower_bound=1)
  flags.DEFINE_enum('lime_segmentation', None, list(analysis.SEGMENTATIONS),
                    "LIME superpixels (default: the dataset's analysis_segmentation).")
  flags.DEFINE_integer('lime_segments', 64, 'About how many SLIC superpixels.', lower_bound=1)
  flags.DEFINE_integer('batch_size', 100, 'Images per compiled call.', lower_bound=1)
  flags.DEFINE_integer('figure_examples', 3, 'Flipped and held examples per figure.',
                       lower_bound=1)
  flags.DEFINE_integer('attack_rounds', 5, 'Iterative attack rounds in fig2_rounds.png.',
                       lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seed for LIME (and the boxed_mnist canvases).', lower_bound=0)
  flags.DEFINE_string('output_dir', None, 'Where to write (default: <model_dir>/analysis).')


def run_config(model_dir: str) -> training.TrainConfig:
  try:
    return training.load_config(model_dir)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def load_run(model_dir: str) -> analysis.AnalyzedModel:
  """The classifier of a trainers.main run, by the rule of aad_tf/runs.py (the newer weights)."""
  try:
    run = runs.load_classifier(model_dir)
  except ValueError as e:
    raise app.UsageError(f'{model_dir}: {e}') from e
  return analysis.AnalyzedModel(os.path.basename(os.path.normpath(model_dir)), run.classifier,
                                run.gradcam_layer)


def load_pretrained(name: str, weights: str, input_shape, num_classes: int
                    ) -> analysis.AnalyzedModel:
  """--model with --pretrained_weights: a whole .keras model, or a weights file."""
  spec = models.get_spec(name)
  if weights.endswith('.keras'):
    classifier = keras.models.load_model(weights, safe_mode=True, compile=False)
  elif 'pretrained_weights' in inspect.signature(spec.builder).parameters:
    # ImageNet backbones load their own weights file (see aad_tf/models/imagenet.py).
    classifier = models.get_model(name, input_shape=input_shape, num_classes=num_classes,
                                  pretrained_weights=weights)
  else:
    classifier = models.get_model(name, input_shape=input_shape, num_classes=num_classes)
    classifier.load_weights(weights)
  logging.info('Loaded %s weights from %s.', name, weights)
  return analysis.AnalyzedModel(name, classifier, spec.gradcam_layer)


def int_list(name: str):
  try:
    return tuple(int(v) for v in getattr(FLAGS, name))
  except ValueError:
    raise app.UsageError(f'--{name} must be a comma-separated list of ints.') from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if bool(FLAGS.model_dir) == bool(FLAGS.model):
    raise app.UsageError('Give either --model_dir or --model (with --pretrained_weights).')
  if FLAGS.model and not FLAGS.pretrained_weights:
    raise app.UsageError('--model needs --pretrained_weights.')
  run_dataset = run_config(FLAGS.model_dir).dataset if FLAGS.model_dir else None
  if run_dataset is not None and run_dataset not in DATASETS:
    raise app.UsageError(
        f'{FLAGS.model_dir} was trained on {run_dataset}, which has no bounding boxes; the '
        f'attention analysis needs boxed data: a run trained on boxed_mnist '
        f'(flags/boxed_mnist_*.cfg) or --dataset=imagenet with --imagenet_dir.')
  dataset = FLAGS.dataset or run_dataset
  if dataset not in DATASETS:
    raise app.UsageError(f'--dataset must be one of {DATASETS} (images with boxes), got '
                         f'{dataset!r}.')
  output_dir = FLAGS.output_dir or (os.path.join(FLAGS.model_dir, 'analysis')
                                    if FLAGS.model_dir else None)
  if not output_dir:
    raise app.UsageError('--output_dir is required with --model.')
  try:
    config = analysis.AnalysisConfig(
        eps=FLAGS.eps if FLAGS.eps is not None else data_lib.get_info(dataset).analysis_stepll_eps,
        kappa_mode=FLAGS.kappa_mode, kappa=FLAGS.kappa, grid=FLAGS.grid or None,
        cells=int_list('cells'), adv_cam_label=FLAGS.adv_cam_label,
        lime_features=int_list('lime_features'), lime_examples=FLAGS.lime_examples,
        lime_samples=FLAGS.lime_samples,
        lime_segmentation=(FLAGS.lime_segmentation or
                           data_lib.get_info(dataset).analysis_segmentation),
        lime_segments=FLAGS.lime_segments, batch_size=FLAGS.batch_size, seed=FLAGS.seed)
  except ValueError as e:
    raise app.UsageError(f'Invalid flags: {e}') from e
  if config.uses_lime:
    try:
      analysis.import_lime()
    except ImportError as e:
      raise app.UsageError(str(e)) from e

  if dataset == 'boxed_mnist':
    # The first --num_examples test canvases of the registered dataset, drawn alone.
    try:
      mnist = data_lib.load_arrays('mnist', data_dir=FLAGS.data_dir, source=FLAGS.data_source)
    except data_lib.DataNotFoundError as e:
      raise app.UsageError(f'boxed_mnist is drawn from MNIST; set --data_dir. {e}') from e
    count = min(FLAGS.num_examples or boxed_mnist.NUM_TEST, boxed_mnist.NUM_TEST)
    x, y, boxes = boxed_mnist.draw_split(mnist, 'test', num_examples=count, seed=FLAGS.seed)
    info = data_lib.get_info(dataset)
    input_shape, num_classes, class_names = x.shape[1:], info.num_classes, list(info.class_names)

    def batches():
      for start in range(0, count, config.batch_size):
        stop = min(start + config.batch_size, count)
        yield x[start:stop], y[start:stop], list(boxes[start:stop, None])
  else:
    if not FLAGS.imagenet_dir:
      raise app.UsageError('--dataset=imagenet needs --imagenet_dir (layout: '
                           'aad_tf/data/imagenet_boxes.py).')
    try:
      annotations = imagenet_boxes.read_annotations(FLAGS.imagenet_dir,
                                                    num_examples=FLAGS.num_examples)
    except (FileNotFoundError, ValueError) as e:
      raise app.UsageError(f'--imagenet_dir: {e}') from e
    size = FLAGS.image_size or (299 if FLAGS.model == 'inception_v3' else 224)
    input_shape, num_classes, class_names = (size, size, 3), 1000, None

  if FLAGS.model_dir:
    primary = load_run(FLAGS.model_dir)
  else:
    primary = load_pretrained(FLAGS.model, FLAGS.pretrained_weights, input_shape, num_classes)
  compared = [load_run(d) for d in FLAGS.compare_model_dirs]
  if dataset == 'imagenet':
    size = primary.classifier.input_shape[1:3]
    batches = lambda: imagenet_boxes.batches(annotations, image_size=size,
                                             batch_size=config.batch_size)
  settings = {'dataset': dataset, 'models': [primary.name] + [m.name for m in compared],
              'model_dirs': [FLAGS.model_dir or FLAGS.pretrained_weights,
                             *FLAGS.compare_model_dirs], 'attack': 'stepll'}
  logging.info('Analysing %s on %s with %s.', settings['models'], dataset, config)
  try:
    result = analysis.analyze([primary, *compared], batches(), config,
                              num_figure_examples=FLAGS.figure_examples)
  except ValueError as e:
    raise app.UsageError(str(e)) from e

  tf.io.gfile.makedirs(output_dir)
  figures = write_figures(result, [primary, *compared], output_dir, class_names)
  with open(os.path.join(output_dir, 'analysis.json'), 'w') as f:
    json.dump(analysis.to_json(result, settings), f, indent=2, default=str)
  markdown = analysis.to_markdown(result, figures=figures, settings=settings)
  with open(os.path.join(output_dir, 'analysis.md'), 'w') as f:
    f.write(markdown)
  np.savez_compressed(os.path.join(output_dir, 'records.npz'),
                      **{f'{name}/{key}': value for name, records in result.records.items()
                         for key, value in records.items()})
  print(markdown)
  logging.info('Wrote %s.', output_dir)


def write_figures(result, analyzed, output_dir, class_names):
  """Writes the figures; returns their file names."""
  written = []
  primary = analyzed[0]
  examples = result.examples
  if examples['flipped'] or examples['held']:
    fig = analysis.figures.attention_figure(examples, primary.name, class_names=class_names)
    written.append(analysis.figures.save(fig, os.path.join(output_dir, 'fig1_gradcam.png')))
    chosen = examples['flipped'][:2] + examples['held'][:1]
    images = np.stack([e['x'] for e in chosen])
    labels = np.array([e['label'] for e in chosen])
    rounds = analysis.attack_rounds(primary, images, labels, eps=result.config.eps,
                                    num_rounds=FLAGS.attack_rounds)
    fig = analysis.figures.rounds_figure(
        images, [e['boxes'] for e in chosen], labels, rounds, class_names=class_names,
        title=f'{primary.name}: Grad-CAM over Iter-StepLL rounds (eps {result.config.eps:.3g})')
    written.append(analysis.figures.save(fig, os.path.join(output_dir, 'fig2_rounds.png')))
    if len(analyzed) > 1:
      fig = analysis.figures.comparison_figure(examples, [m.name for m in analyzed],
                                               class_names=class_names)
      written.append(analysis.figures.save(fig, os.path.join(output_dir, 'fig_compare.png')))
  lime = result.lime_examples
  if lime['flipped'] or lime['held']:
    fig = analysis.figures.lime_figure(lime, result.config.lime_features[0],
                                       class_names=class_names)
    written.append(analysis.figures.save(fig, os.path.join(output_dir, 'fig3_lime.png')))
  return [os.path.basename(path) for path in written]


def run() -> None:
  """The console script `aad-analyze`: the same as `python -m trainers.analyze`."""
  flagfiles.run(main, define_flags)


if __name__ == '__main__':
  run()
