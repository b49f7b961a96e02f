r"""How strongly AAD's terms pull on the weights of one trained model, for every Grad-CAM scaling.

  python -m benchmarks.aad_gradient_ratios --model_dir=RUN --data_dir=../shared/data \
      --checkpoint=RUN/checkpoints/ckpt-600 --output=ratios.json

Loads the run's classifier, then for each --scalings entry builds the run's AAD step
(flags of the run's config.json, alpha = beta = 1, noise-free attention passes) and calls
`AADModel.aad_diagnostics` on --batches fixed batches of training images (PGD examples crafted by
the run's training attack at its full eps). The ratios |grad(w * L)| / |grad(L_base)| are linear
in the weight w, so the ratio at the paper's 0.01 is 0.01 times the reported one; this gives, for
one model state and in one run, the weight each scaling needs for its terms to reach a given
share of the classification gradient.
"""

import dataclasses
import json

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import gradcam as gradcam_lib
from aad_tf import training

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('model_dir', None, 'A trainers.main run.')
  flags.DEFINE_string('checkpoint', None, 'Checkpoint path (default: the latest).')
  flags.DEFINE_string('data_dir', None, "Data directory (default: the run's).")
  flags.DEFINE_list('scalings', list(gradcam_lib.NORMALIZATIONS), 'Grad-CAM scalings to measure.')
  flags.DEFINE_integer('batches', 3, 'Batches of --batch_size training images.', lower_bound=1)
  flags.DEFINE_integer('batch_size', 100, 'Images per batch.', lower_bound=1)
  flags.DEFINE_string('output', None, 'Optional JSON output path.')


def main(argv):
  del argv
  if not FLAGS.model_dir:
    raise app.UsageError('--model_dir is required.')
  config = training.load_config(FLAGS.model_dir)
  classifier, layer, step = training.restore_classifier(config, FLAGS.checkpoint)
  arrays = data_lib.load_arrays(config.dataset, data_dir=FLAGS.data_dir or config.data_dir,
                                source=config.data_source)
  x_train, y_train = arrays.split('train')
  attack = dataclasses.replace(config.defense.attack, warmup_steps=0)
  results = {'model_dir': FLAGS.model_dir, 'step': step, 'batches': FLAGS.batches,
             'batch_size': FLAGS.batch_size, 'weight': 1.0, 'scalings': {}}
  for scaling in FLAGS.scalings:
    defense = dataclasses.replace(config.defense, aad=True, alpha=1.0, beta=1.0,
                                  gradcam_normalize=scaling, attention_mode='inference',
                                  attack=attack)
    model = defense_lib.AADModel(classifier, layer, defense, seed=config.seed)
    model.compile(optimizer='adam')
    values = []
    for b in range(FLAGS.batches):
      x = x_train[b * FLAGS.batch_size:(b + 1) * FLAGS.batch_size]
      y = y_train[b * FLAGS.batch_size:(b + 1) * FLAGS.batch_size]
      values.append({k: float(v) for k, v in model.aad_diagnostics(x, y).items()})
    mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    results['scalings'][scaling] = {'mean': mean, 'batches': values}
    print(f'{scaling:12s} ratio rect {mean["grad_ratio_rect"]:.4f} pres '
          f'{mean["grad_ratio_pres"]:.4f} (at weight 1; x0.01 for the paper) cos '
          f'{mean["cos_rect"]:+.2f} / {mean["cos_pres"]:+.2f}, map mean {mean["map_mean"]:.3g} '
          f'max {mean["map_max"]:.3g}, area {mean["area_fraction"]:.2f}', flush=True)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(results, f, indent=2, sort_keys=True)
    logging.info('Wrote %s.', FLAGS.output)  # the results are printed once, above


if __name__ == '__main__':
  define_flags()
  app.run(main)
