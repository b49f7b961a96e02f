"""trainers.main's flags, and the TrainConfig they define.

`define_flags` defines them (every flag optional, so that tests and flagfiles set only what they
need; the shared ones are in common_flags); `config_from_flags` builds and validates the run's
TrainConfig from the parsed flags. The flags that configure the steps around training (summaries,
the overfitting guard, the closing evaluation, export) are read by trainers/main.py itself.
"""

from absl import app
from absl import flags

from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import evaluation
from aad_tf import gradcam as gradcam_lib
from aad_tf import models
from aad_tf.models import imagenet as imagenet_models
from aad_tf import overfitting
from aad_tf import precision
from aad_tf import schedules
from aad_tf import training
from trainers import common_flags
from trainers import defense_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines trainers.main's own flags (beside common_flags'); every flag is optional."""
  flags.DEFINE_enum('model', 'lenet', list(models.available_models()), 'Classifier backbone.')
  flags.DEFINE_float('keep_prob', 0.5, 'Dropout keep probability (LeNet).', lower_bound=0.0,
                     upper_bound=1.0)
  flags.DEFINE_integer('model_width', None, "Channels of the backbone's first stage (ResNet9: "
                       '64 is the standard network; default: the backbone\'s).', lower_bound=1)
  flags.DEFINE_integer('batch_size', 100, 'Global batch size.', lower_bound=1)
  flags.DEFINE_float('epochs', 5, 'Training epochs (unless --train_steps).', lower_bound=0.0)
  flags.DEFINE_enum('optimizer', 'adam', list(training.OPTIMIZERS), 'Optimizer.')
  flags.DEFINE_float('learning_rate', 1e-3, 'Initial learning rate.', lower_bound=0.0)
  flags.DEFINE_float('lr_decay_rate', 1.0, 'Learning-rate factor every --lr_decay_epochs.',
                     lower_bound=0.0)
  flags.DEFINE_float('lr_decay_epochs', 1.0, 'Epochs between learning-rate decays.',
                     lower_bound=0.0)
  flags.DEFINE_enum('lr_schedule', 'step', list(schedules.SCHEDULES),
                    'step: --lr_decay_rate every --lr_decay_epochs; cyclic: 0 -> --learning_rate '
                    'at 40% of the run -> 0 at its end (fast adversarial training).')
  flags.DEFINE_float('momentum', 0.9, 'Momentum for sgd and rmsprop.', lower_bound=0.0)
  flags.DEFINE_float('weight_decay', 0.0, 'Decoupled weight decay of the optimizer (0: none).',
                     lower_bound=0.0)
  flags.DEFINE_enum('augment', 'none', ['none', 'pad_crop_flip', 'inception_crop_flip'],
                    'Training augmentation: pad_crop_flip (CIFAR-10), inception_crop_flip '
                    '(ImageNet random-resized crop and flip).')
  flags.DEFINE_enum('defense', 'madry', sorted(defense_lib.BASE_DEFENSES),
                    'Base adversarial training.')
  flags.DEFINE_bool('aad', False, "Add AAD's rectification and preservation losses.")
  flags.DEFINE_float('alpha', 0.01, 'Weight of the rectification loss.', lower_bound=0.0)
  flags.DEFINE_float('beta', 0.01, 'Weight of the preservation loss.', lower_bound=0.0)
  flags.DEFINE_string('kappa', 'mean', "Attention threshold: 'mean' or a number.")
  flags.DEFINE_enum('gradcam_normalize', 'none', list(gradcam_lib.NORMALIZATIONS),
                    "Scaling of the Grad-CAM maps of L_p and the masks: none (raw, the TOMM "
                    "text), max (per-image max) or rms_softmax (the authors' TF1 code).")
  flags.DEFINE_enum('attention_mode', 'inference', list(defense_lib.ATTENTION_MODES),
                    "AAD's attention passes: inference (moving BatchNorm statistics, no dropout "
                    "noise), batch (batch statistics, no dropout noise, the moving statistics "
                    "from the base loss's pass only: use it for strong AAD terms on a BatchNorm "
                    "backbone; see README) or training (the earlier step: four BatchNorm "
                    "updates, two on masked images).")
  flags.DEFINE_integer('aad_diagnostics_examples', 100,
                       'Training images of the aad/* TensorBoard diagnostics, computed every '
                       '--log_every steps (0: off).', lower_bound=0)
  flags.DEFINE_enum('classification_loss', 'ce', ['ce', 'soft_margin'],
                    'L_c: cross-entropy or multi-label soft margin (the paper).')
  flags.DEFINE_float('train_eps', 0.3, 'L-inf radius of the training attack.', lower_bound=0.0,
                     upper_bound=1.0)
  flags.DEFINE_float('train_step_size', 0.01, 'Step size of the training PGD.', lower_bound=0.0)
  flags.DEFINE_integer('train_num_steps', 40, 'Steps of the training PGD.', lower_bound=0)
  flags.DEFINE_bool('train_random_init', True, 'Random start for the training PGD.')
  flags.DEFINE_integer('train_eps_warmup_steps', 0,
                       'Ramp the training eps (and step size) linearly over this many steps.',
                       lower_bound=0)
  defense_flags.define_flags()  # each base defense's hyperparameters (--alp_weight, ...)
  flags.adopt_module_key_flags(defense_flags)
  flags.DEFINE_enum('overfit_guard', 'off', list(overfitting.MODES),
                    'Catastrophic-overfitting guard: off, warn, stop, or rollback (restore the '
                    'last healthy checkpoint and stop).')
  flags.DEFINE_integer('overfit_guard_examples', 500,
                       'Held-out examples (the last N of the test split) the guard attacks.',
                       lower_bound=1)
  flags.DEFINE_integer('overfit_guard_every', 0,
                       'Guard check every N steps as well as at epoch ends (0: epoch ends only).',
                       lower_bound=0)
  flags.DEFINE_integer('overfit_guard_pgd_steps', 10, 'PGD steps of the guard check.',
                       lower_bound=1)
  flags.DEFINE_float('overfit_guard_drop', 0.2,
                     'PGD accuracy drop (fraction) below the best check that counts as a collapse.',
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('checkpoint_every', 500, 'Steps between checkpoints.', lower_bound=1)
  flags.DEFINE_integer('keep_checkpoints', 3, 'Checkpoints to keep.', lower_bound=1)
  flags.DEFINE_integer('log_every', 100, 'Steps between scalar summaries.', lower_bound=1)
  flags.DEFINE_integer('summary_every', 200, 'Steps between activation-map image summaries.',
                       lower_bound=1)
  flags.DEFINE_integer('summary_images', 8,
                       'Held-out test images in the TensorBoard activation-map panel (0: none).',
                       lower_bound=0)
  flags.DEFINE_list('eval_attacks', ['clean', 'fgsm', 'pgd20'],
                    'Closing evaluation attacks (names as in trainers.evaluate --attacks).')
  flags.DEFINE_float('eval_eps', None, "Evaluation eps (default: the dataset's eval_eps).",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('eval_batch_size', 500, 'Evaluation batch size.', lower_bound=1)
  flags.DEFINE_bool('export', True, 'Export the classifier after training.')
  # Scale: backbones, ImageNet input, distribution, precision, determinism.
  flags.DEFINE_string('pretrained_weights', None,
                      'Local weights file to start from (resnet50: backbone weights; '
                      'inception_v3: the whole network). Never downloaded.')
  flags.DEFINE_enum('resnet_source', 'keras_cv', list(imagenet_models.RESNET_SOURCES),
                    'Library of --model=resnet50: keras_cv (default) or keras_applications '
                    '(keras.applications.ResNet50, no keras-cv).')
  flags.DEFINE_integer('image_size', None, 'Input size for ImageNet (default 224).',
                       lower_bound=32)
  flags.DEFINE_string('manual_dir', None,
                      'Directory with ILSVRC2012_img_{train,val}.tar for preparing ImageNet '
                      '(default <data_dir>/downloads/manual).')
  flags.DEFINE_list('devices', [],
                    'Devices to mirror over, e.g. GPU:0,GPU:1 (cpu:0,cpu:1 splits the CPU); '
                    'default: every visible GPU. Multi-worker: set TF_CONFIG instead.')
  define_precision_flag(
      'mixed_precision', 'float32',
      'Training precision: auto, float32 or bfloat16 (mixed_bfloat16: bfloat16 compute, float32 '
      'variables). auto takes bfloat16 where the CPU has AMX or AVX512_BF16 or the GPUs have '
      'compute capability >= 8.0 (elsewhere bfloat16 is emulated and slower) and records the '
      'choice in config.json, which a resume keeps. --mixed_precision / --nomixed_precision '
      'still mean bfloat16 / float32. Evaluation and export are float32 either way.')
  flags.DEFINE_bool('jit_compile', None,
                    'Compile the train step with XLA (default: Keras decides; off with several '
                    'replicas or --deterministic). XLA is for GPUs: on a CPU our steps run about '
                    '7x slower with it.')
  flags.DEFINE_bool('deterministic', False,
                    'Deterministic ops and seeds: a resumed run ends with the same weights as an '
                    'uninterrupted one.')


class _PrecisionParser(flags.ArgumentParser):
  """auto | float32 | bfloat16, and the true / false of the earlier bool flag."""

  def parse(self, argument):
    return precision.normalize(argument)

  def flag_type(self):
    return 'string'


class _PrecisionFlag(flags.Flag):
  """A flag with a value that also takes the bool forms --name / --noname (bfloat16 / float32)."""

  def __init__(self, name, default, help_string):
    super().__init__(_PrecisionParser(), None, name, default, help_string, boolean=True)

  def _serialize(self, value):  # flags.txt: --name=value, not the bool forms
    return '' if value is None else f'--{self.name}={value}'


def define_precision_flag(name: str, default: str, help_string: str,
                          flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines --<name>=auto|float32|bfloat16, accepting --<name> / --no<name> as before."""
  flags.DEFINE_flag(_PrecisionFlag(name, default, help_string), flag_values)


def config_from_flags() -> training.TrainConfig:
  """Builds and validates the run's config; raises app.UsageError naming the bad flag."""
  if not FLAGS.model_dir:
    raise app.UsageError('--model_dir is required.')
  try:
    attack = defense_lib.AttackConfig(eps=FLAGS.train_eps, step_size=FLAGS.train_step_size,
                                      num_steps=FLAGS.train_num_steps,
                                      random_init=FLAGS.train_random_init,
                                      warmup_steps=FLAGS.train_eps_warmup_steps)
    defense = defense_lib.DefenseConfig(
        defense=FLAGS.defense, aad=FLAGS.aad, alpha=FLAGS.alpha, beta=FLAGS.beta,
        kappa=common_flags.parse_kappa(FLAGS.kappa), classification_loss=FLAGS.classification_loss,
        attack=attack, gradcam_normalize=FLAGS.gradcam_normalize,
        attention_mode=FLAGS.attention_mode,
        hparams=defense_flags.hparams_from_flags(FLAGS.defense))
    config = training.TrainConfig(
        model_dir=FLAGS.model_dir, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
        data_source=FLAGS.data_source, download=FLAGS.download, model=model_from_flags(),
        keep_prob=FLAGS.keep_prob, model_width=FLAGS.model_width, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
        train_steps=FLAGS.train_steps, optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate, lr_decay_rate=FLAGS.lr_decay_rate,
        lr_decay_epochs=FLAGS.lr_decay_epochs, lr_schedule=FLAGS.lr_schedule, momentum=FLAGS.momentum,
        weight_decay=FLAGS.weight_decay,
        augment=None if FLAGS.augment == 'none' else FLAGS.augment, seed=FLAGS.seed,
        defense=defense, checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints, log_every=FLAGS.log_every,
        pretrained_weights=FLAGS.pretrained_weights, image_size=FLAGS.image_size,
        manual_dir=FLAGS.manual_dir, mixed_precision=FLAGS.mixed_precision,
        jit_compile=FLAGS.jit_compile, deterministic=FLAGS.deterministic, eval_eps=eval_eps())
    evaluation.standard_attacks(FLAGS.eval_attacks, eps=eval_eps())
    info = data_lib.get_info(FLAGS.dataset)  # e.g. ensemble's static models must fit the data
    defense_lib.get_defense(defense.defense).check_inputs(
        defense, input_shape=info.image_shape, num_classes=info.num_classes)
  except ValueError as e:
    raise app.UsageError(f'Invalid flags: {e}') from e
  return config


def model_from_flags() -> str:
  """The registry name of --model, with --resnet_source choosing ResNet50's library."""
  if FLAGS.model == 'resnet50':
    return imagenet_models.RESNET_SOURCES[FLAGS.resnet_source]
  if FLAGS.resnet_source != 'keras_cv':
    raise app.UsageError(f'--resnet_source applies to --model=resnet50, not {FLAGS.model}.')
  return FLAGS.model


def eval_eps() -> float:
  """--eval_eps, else the dataset's default evaluation eps (recorded in config.json)."""
  if FLAGS.eval_eps is not None:
    return FLAGS.eval_eps
  return data_lib.get_info(FLAGS.dataset).eval_eps  # the registry entry's evaluation budget
