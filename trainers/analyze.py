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
checkpoint (aad_tf/runs.py). The flags are defined in trainers/analyze_flags.py. With --model,
--pretrained_weights is a whole .keras model or a weights file (the ImageNet backbones load it
themselves: a whole InceptionV3 as in the paper's analysis; resnet50's file holds only its
backbone, so it needs a trained run instead). --dataset=imagenet reads the validation images and
box XML files from --imagenet_dir (layout: aad_tf/data/imagenet_boxes.py), not the TFDS pipeline.
"""

import os

from absl import app
from absl import flags
from absl import logging

from aad_tf import analysis
from aad_tf import data as data_lib
from aad_tf.data import boxed_mnist
from aad_tf.data import imagenet_boxes
from aad_tf import runs
from trainers import analyze_flags
from trainers import flagfiles

FLAGS = flags.FLAGS
DATASETS = analyze_flags.DATASETS


def define_flags() -> None:
  analyze_flags.define_flags()
  # --help lists the flags of the main module only: make the defined ones its key flags.
  flags.adopt_module_key_flags(analyze_flags)


def run_config(model_dir: str):
  try:
    return runs.load_config(model_dir)
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
    primary = analysis.load_pretrained(FLAGS.model, FLAGS.pretrained_weights, input_shape,
                                         num_classes)
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

  markdown = analysis.write_analysis(result, [primary, *compared], output_dir,
                                      settings=settings, class_names=class_names,
                                      attack_rounds=FLAGS.attack_rounds)
  # The tables are the binary's result: printed once, on stdout (the log says where they are
  # saved).
  print(markdown, flush=True)


def run() -> None:
  """The console script `aad-analyze`: the same as `python -m trainers.analyze`."""
  flagfiles.run(main, define_flags)


if __name__ == '__main__':
  run()
