r"""The rounding-noise floor of AAD's terms in bfloat16 against their values on real pairs (issue 25).

  python -m benchmarks.bf16_noise_floor --data_dir=../shared/data

A LeNet is trained briefly on MNIST (float32, --train_steps of Adam on clean images); its weights
are then loaded into a float32 and a mixed_bfloat16 AADModel (Madry + AAD, inference-mode
attention passes, --gradcam_normalize maps, kappa = mean). On --examples test images x and their
PGD-10 images x_adv (eps 0.3, crafted on the float32 model) it reports, per example means:

  L_p(x, x)            both passes of one image in one precision (the noise-free property: 0)
  L_p(x, x_adv)        the real pair, float32 and bfloat16
  |g_bf16(x) - g_f32(x)|_1   the rounding noise of one map: the floor under any L_p in bfloat16
  d_r(x, x_m)          the rectification distance |softmax f(x) - softmax f(x_m)|_2 of the
                       clean half of L_r, float32 and bfloat16 (each with its own mask)
  |softmax f_bf16(x) - softmax f_f32(x)|_2   the rounding noise of one prediction: the floor
                       under d_r in bfloat16
"""

import json

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from aad_tf import attacks
from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import gradcam as gradcam_lib
from aad_tf import losses
from aad_tf import models
from aad_tf import precision

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('data_dir', '../shared/data', 'Directory with mnist.npz.')
  flags.DEFINE_integer('train_steps', 150, 'Adam steps of batch 50 on clean images.')
  flags.DEFINE_integer('examples', 200, 'Test images measured.')
  flags.DEFINE_enum('gradcam_normalize', 'none', list(gradcam_lib.NORMALIZATIONS), 'Map scaling.')
  flags.DEFINE_string('output', None, 'Optional JSON output path.')


def aad_model(weights, dtype: str) -> defense_lib.AADModel:
  with precision.dtype_policy(precision.keras_policy(dtype)):
    classifier = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  classifier.set_weights(weights)
  config = defense_lib.DefenseConfig(defense='madry', aad=True,
                                     gradcam_normalize=FLAGS.gradcam_normalize)
  return defense_lib.AADModel(classifier, models.get_spec('lenet').gradcam_layer, config)


def terms(model, x, y, x_adv):
  """Per-example maps, L_p, and the clean half's rectification distance (and the logits)."""
  fn = model.features.fn(training=False)
  cam, logits = gradcam_lib.gradcam(fn, x, y, normalize=FLAGS.gradcam_normalize)
  cam_again, _ = gradcam_lib.gradcam(fn, x, y, normalize=FLAGS.gradcam_normalize)
  adv_cam, _ = gradcam_lib.gradcam(fn, x_adv, y, normalize=FLAGS.gradcam_normalize)
  masked = gradcam_lib.mask_attention(x, cam)
  d_r = -losses.rectification(logits, model.classifier(masked, training=False))
  return {'cam': cam, 'logits': logits, 'lp_self': losses.preservation(cam, cam_again),
          'lp_real': losses.preservation(cam, adv_cam), 'd_r': d_r}


def main(argv):
  del argv
  arrays = data_lib.load_arrays('mnist', data_dir=FLAGS.data_dir, source='npz')
  keras.utils.set_random_seed(0)
  trained = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  trained.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  n = 50 * FLAGS.train_steps
  trained.fit(arrays.x_train[:n], arrays.y_train[:n], batch_size=50, epochs=1, verbose=0,
              shuffle=False)
  x = tf.constant(arrays.x_test[:FLAGS.examples])
  y = tf.constant(arrays.y_test[:FLAGS.examples].astype(np.int32))
  x_adv = attacks.pgd(lambda t: trained(t, training=False), x, y, eps=0.3, step_size=0.075,
                      num_steps=10)
  weights = trained.get_weights()
  got = {dtype: terms(aad_model(weights, dtype), x, y, x_adv) for dtype in ('float32', 'bfloat16')}
  f32, bf16 = got['float32'], got['bfloat16']
  mean = lambda t: float(tf.reduce_mean(tf.cast(t, tf.float64)))
  probs = lambda t: tf.nn.softmax(tf.cast(t, tf.float32))
  results = {
      'cpu': precision.describe_cpu(), 'examples': FLAGS.examples,
      'train_steps': FLAGS.train_steps, 'gradcam_normalize': FLAGS.gradcam_normalize,
      'clean_accuracy': mean(tf.cast(tf.argmax(f32['logits'], -1, output_type=tf.int32) == y,
                                     tf.float32)),
      'lp_self': {'float32': mean(f32['lp_self']), 'bfloat16': mean(bf16['lp_self'])},
      'lp_real': {'float32': mean(f32['lp_real']), 'bfloat16': mean(bf16['lp_real'])},
      'lp_rounding_floor': mean(gradcam_lib.map_distance(bf16['cam'], f32['cam'])),
      'map_l1_mean': mean(tf.reduce_sum(f32['cam'], axis=[1, 2])),
      'd_r': {'float32': mean(f32['d_r']), 'bfloat16': mean(bf16['d_r'])},
      'd_r_difference': mean(tf.abs(bf16['d_r'] - f32['d_r'])),
      'softmax_rounding_floor': mean(tf.norm(probs(bf16['logits']) - probs(f32['logits']),
                                             axis=-1)),
  }
  lines = [f'bfloat16 noise floor of AAD terms: LeNet/MNIST after {FLAGS.train_steps} steps '
           f'(clean {100 * results["clean_accuracy"]:.1f}%), {FLAGS.examples} test images, '
           f'{FLAGS.gradcam_normalize} maps, CPU {results["cpu"]}',
           '| quantity (mean per example) | float32 | bfloat16 |', '|---|---|---|',
           f'| L_p(x, x), two passes | {results["lp_self"]["float32"]:.3g} | '
           f'{results["lp_self"]["bfloat16"]:.3g} |',
           f'| L_p(x, x_pgd), real pairs | {results["lp_real"]["float32"]:.4g} | '
           f'{results["lp_real"]["bfloat16"]:.4g} |',
           f'| L1(g_bf16(x), g_f32(x)): rounding floor of L_p | | '
           f'{results["lp_rounding_floor"]:.4g} |',
           f'| L1(g(x)) (map size) | {results["map_l1_mean"]:.4g} | |',
           f'| d_r(x, x_m), real masks | {results["d_r"]["float32"]:.4g} | '
           f'{results["d_r"]["bfloat16"]:.4g} |',
           f'| abs(d_r bf16 - d_r f32) | | {results["d_r_difference"]:.4g} |',
           f'| L2(softmax bf16, softmax f32): rounding floor of d_r | | '
           f'{results["softmax_rounding_floor"]:.4g} |']
  print('\n'.join(lines), flush=True)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  define_flags()
  app.run(main)
