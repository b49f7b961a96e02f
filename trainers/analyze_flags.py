"""trainers.analyze's flags (the analysis defaults per dataset are in the dataset registry).

Every flag is optional; a --model_dir run's dataset and weights come from the run
(aad_tf/runs.py).
"""

from absl import flags

from aad_tf import analysis
from aad_tf import data as data_lib
from aad_tf import models

# The datasets with bounding boxes; each registry entry holds its analysis_stepll_eps and
# analysis_segmentation (the defaults of --eps and --lime_segmentation; aad_tf/data/catalog.py).
DATASETS = tuple(name for name in data_lib.available_datasets()
                 if data_lib.get_info(name).analyzable)


def define_flags() -> None:
  """Defines trainers.analyze's flags; every flag is optional."""
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
