"""trainers.evaluate's flags: what to evaluate, the attack suite's settings, the diagnostics.

Every flag is optional; the shared ones (--model_dir, --data_dir, --dataset, --seed,
--eval_examples, ...) are in common_flags. A run's own settings (dataset, eval eps, seed,
Grad-CAM scaling) come from its config.json unless these flags override them.
"""

from absl import flags

from aad_tf import evaluation
from aad_tf import gradcam as gradcam_lib

# The attack and diagnostic settings recorded in robustness.json (`settings`).
RECORDED = ('sigma', 'kappa', 'a3_num_steps', 'apgd_num_steps', 'apgd_restarts',
            'apgd_target_classes', 'square_queries', 'square_p_init', 'adaptive_num_steps',
            'adaptive_weight', 'diagnostic_examples', 'sweep_steps', 'curve_steps', 'batch_size')


def define_flags() -> None:
  """Defines trainers.evaluate's own flags (beside common_flags'); every flag is optional."""
  flags.DEFINE_string('saved_model', None,
                      'An exported SavedModel directory or .keras file to evaluate instead of '
                      'a --model_dir run (needs --dataset).')
  flags.DEFINE_enum('weights', 'auto', ['auto', 'keras', 'checkpoint'],
                    'With --model_dir: auto (the newer of the latest checkpoint and '
                    'export/model.keras, see aad_tf/runs.py), keras or checkpoint.')
  flags.DEFINE_string('checkpoint', None,
                      'With --model_dir: a checkpoint path (<model_dir>/checkpoints/ckpt-<step>).')
  flags.DEFINE_string('gradcam_layer', None,
                      'Grad-CAM layer of a --saved_model .keras file (default: the registry '
                      "entry of the model's name).")
  flags.DEFINE_string('output_dir', None,
                      'Where to write robustness.json/.md (default: the run directory).')
  flags.DEFINE_list('attacks', list(evaluation.ALL_ATTACKS),
                    'Attacks to run, a subset of: ' + ', '.join(evaluation.ALL_ATTACKS) +
                    ' (also fab_t, autoattack, pgd<k>, cw<k>, pgd<k>_r<n>, cw<k>_r<n>, '
                    'iter_stepll<k>).')
  flags.DEFINE_float('eps', None,
                     "L-inf radius in [0, 1] (default: the run's --eval_eps, else the dataset's "
                     'eval_eps, aad_tf/data/catalog.py).')
  flags.DEFINE_integer('batch_size', 500, 'Evaluation batch size.', lower_bound=1)
  flags.DEFINE_integer('eval_offset', 0,
                       'Index of the first test example (a multiple of --batch_size): '
                       'evaluates [offset, offset + eval_examples) with the random starts a '
                       'single evaluation from 0 would use there, so pieces can be merged.',
                       lower_bound=0)
  flags.DEFINE_float('sigma', 10.0, 'A^3 weight of the attention term (paper: 10).',
                     lower_bound=0.0)
  flags.DEFINE_string('kappa', 'mean', "A^3 attention threshold: 'mean' or a number.")
  flags.DEFINE_enum('gradcam_normalize', None, list(gradcam_lib.NORMALIZATIONS),
                    "A^3's Grad-CAM scaling (default: the run's own --gradcam_normalize, else "
                    "'none'); the same map that AAD trains with (aad_tf.gradcam).")
  flags.DEFINE_integer('a3_num_steps', 10,
                       'Steps of iter_stepll, iter_stepll_a3 and pgd_a3 (paper: 3 on ImageNet).',
                       lower_bound=1)
  flags.DEFINE_integer('apgd_num_steps', 100, 'APGD iterations per restart.', lower_bound=1)
  flags.DEFINE_integer('apgd_restarts', 1, 'APGD random restarts.', lower_bound=1)
  flags.DEFINE_integer('apgd_target_classes', 9, 'Target classes of apgd_t and fab_t.',
                       lower_bound=1)
  flags.DEFINE_integer('square_queries', 1000,
                       'Square Attack iterations after its start: 1 + N queries per example.',
                       lower_bound=1)
  flags.DEFINE_float('square_p_init', 0.8, 'Square Attack initial fraction of changed pixels.',
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('adaptive_num_steps', 100, 'Steps of the adaptive attack.', lower_bound=1)
  flags.DEFINE_float('adaptive_weight', 1.0,
                     'Adaptive attack: weight of the relative Grad-CAM shift.', lower_bound=0.0)
  flags.DEFINE_bool('diagnostics', True, 'Run the gradient-masking diagnostics.')
  flags.DEFINE_integer('diagnostic_examples', 500,
                       'Examples used by the diagnostics that query the model.', lower_bound=1)
  flags.DEFINE_integer('sweep_steps', 20, 'PGD steps per eps of the diagnostic eps sweep.',
                       lower_bound=1)
  flags.DEFINE_integer('curve_steps', 20, 'PGD steps of the diagnostic loss curve.',
                       lower_bound=1)
