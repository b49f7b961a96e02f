r"""AutoAttack (standard version, aad-tf native) against ART 1.20's AutoAttack, in one run.

  python -m benchmarks.autoattack_vs_art --model=/tmp/aa_model/export/model.keras \
      --data_dir=../shared/data --num_examples=500 --output=docs/results/autoattack_vs_art

Both attack the same classifier on the same first --num_examples MNIST test images at the same
eps, one after the other in this process (ours first), and report the robust accuracy, the
wall time and the process CPU time (robust to other jobs sharing the machine), and how many
examples the two call robust differently. Ours is `aad_tf.attacks.autoattack.autoattack_stages`, one
compiled graph (the time includes tracing); it is what `trainers.evaluate --attacks=autoattack`
runs, with the same seed (`evaluation.attack_seed(seed, 'autoattack', 0)`), so on the same
model `trainers.evaluate --attacks=autoattack --eval_examples=N --batch_size=N --seed=S` reports
the robust accuracy and the per-stage accuracies that this benchmark reports for
--num_examples=N --seed=S.

ART's `AutoAttack` is run with the closest configuration ART offers to the standard version:
ART has neither targeted DLR APGD towards the top-ranked classes nor FAB, so it gets
  attacks = [APGD-CE (100 iterations, 1 random start, step 2 eps),
             APGD-DLR (the same), Square (5000 iterations, p_init 0.8, 1 restart)],
  targeted = True,
i.e. ART runs the three untargeted, then APGD-CE and APGD-DLR towards each of the K - 1 other
classes (on MNIST the same 9 classes as APGD-T's top 9; ART's Square is untargeted only), each
on the examples still robust. This is more attack runs than the standard version (untargeted
DLR and targeted CE on top), without FAB-T. Needs `pip install -e '.[peers]'`.
Writes <output>.json and <output>.md.
"""

import json
import os
import platform
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from aad_tf.attacks import autoattack
from aad_tf.attacks import windowed
from aad_tf import data as data_lib
from aad_tf import evaluation

FLAGS = flags.FLAGS


def define_flags():
  """The benchmark's flags (a function, so that tests can import this module)."""
  flags.DEFINE_string('model', None, 'A .keras classifier (logits) of MNIST images.')
  flags.DEFINE_string('data_dir', None, 'Directory with mnist.npz.')
  flags.DEFINE_integer('num_examples', 500, 'First test images attacked.', lower_bound=1)
  flags.DEFINE_float('eps', 0.3, 'L-inf radius.', lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('seed', 0, 'Seed of both attacks.', lower_bound=0)
  flags.DEFINE_integer('num_steps', autoattack.NUM_STEPS,
                       'APGD / FAB iterations of both (standard: 100; smaller only to smoke-test).',
                       lower_bound=1)
  flags.DEFINE_integer('square_queries', autoattack.SQUARE_QUERIES,
                       'Square budget of both (standard: 5000).', lower_bound=1)
  flags.DEFINE_bool('art', True, 'Also run ART (else only ours, e.g. without the peers extra).')
  flags.DEFINE_bool('stage_times', False,
                    'Also time each of our four attacks alone (each compiled on the examples the '
                    'earlier ones left robust), to show where the time goes.')
  flags.DEFINE_string('output', None, 'Output path without extension (.json and .md written).')


def ours_seed(seed: int) -> tf.Tensor:
  """The stateless seed of our AutoAttack: trainers.evaluate's for one batch (batch index 0)."""
  return evaluation.attack_seed(seed, 'autoattack', 0)


def run_ours(classifier, x, y, *, eps, seed, num_steps, square_queries):
  """Our AutoAttack on all of x in one compiled call; accuracies per stage and timing.

  Robust: robust after the last stage and classified correctly on x_adv, the evaluation's rule
  (`evaluation.loop`; the second part never changes the first).
  """
  model_fn = lambda images: classifier(images, training=False)

  @tf.function(input_signature=(tf.TensorSpec([None, *x.shape[1:]], tf.float32),
                                tf.TensorSpec([None], tf.int32)))
  def attack(images, labels):
    x_adv, robust = autoattack.autoattack_stages(
        model_fn, images, labels, eps=eps, seed=ours_seed(seed), num_steps=num_steps,
        square_queries=square_queries, model=classifier)
    correct = tf.logical_and(
        robust['square'],
        tf.equal(tf.argmax(model_fn(x_adv), -1, output_type=tf.int32), labels))
    return x_adv, robust, correct

  wall, cpu = time.time(), time.process_time()
  x_adv, robust, correct = attack(tf.constant(x), tf.constant(y))
  correct = correct.numpy()
  wall, cpu = time.time() - wall, time.process_time() - cpu
  x_adv = x_adv.numpy()
  return {'robust_accuracy': float(correct.mean()),
          'accuracy_after': {name: float(v.numpy().mean()) for name, v in robust.items()},
          'wall_s': wall, 'cpu_s': cpu,
          'max_linf': float(np.abs(x_adv - x).max()),
          'in_range': bool(x_adv.min() >= 0.0 and x_adv.max() <= 1.0),
          'robust': correct, 'params': autoattack.standard_params()}


def run_stages(classifier, x, y, *, eps, seed, num_steps, square_queries):
  """Each stage of our AutoAttack compiled and timed alone, on what the earlier stages left.

  The same attacks, seeds and subsets as `autoattack_stages` (so the same robust accuracy after
  each stage); a rerun of the attack split into four calls, for the time of each.
  """
  model_fn = lambda images: classifier(images, training=False)
  seed = ours_seed(seed)
  stages = autoattack.stage_attacks(model_fn, eps=eps, num_steps=num_steps,
                                    square_queries=square_queries, model=classifier)
  predict = lambda images: np.argmax(classifier.predict(images, batch_size=1000, verbose=0), -1)
  robust = predict(x) == y
  times = {}
  for k, name in enumerate(autoattack.STAGES):
    index = np.flatnonzero(robust)
    attack = tf.function(lambda xs, ys, name=name, k=k: stages[name](
        xs, ys, tf.random.experimental.stateless_fold_in(seed, k)))
    wall, cpu = time.time(), time.process_time()
    if len(index):
      x_adv, fooled = attack(tf.constant(x[index]), tf.constant(y[index]))
      robust[index[fooled.numpy() | (predict(x_adv.numpy()) != y[index])]] = False
    wall, cpu = time.time() - wall, time.process_time() - cpu
    times[name] = {'examples': int(len(index)), 'wall_s': wall, 'cpu_s': cpu,
                   'accuracy_after': float(robust.mean())}
  return times


def run_art(classifier, x, y, *, eps, seed, num_steps, square_queries):
  """ART 1.20's AutoAttack (configuration in the module docstring); accuracy and timing."""
  import art  # pylint: disable=g-import-not-at-top
  from art.attacks.evasion import AutoAttack  # pylint: disable=g-import-not-at-top
  from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack  # pylint: disable=g-import-not-at-top
  from art.estimators.classification import TensorFlowV2Classifier  # pylint: disable=g-import-not-at-top

  np.random.seed(seed)
  batch = len(x)
  estimator = TensorFlowV2Classifier(
      model=classifier, nb_classes=int(classifier.output_shape[-1]), input_shape=x.shape[1:],
      loss_object=keras.losses.CategoricalCrossentropy(from_logits=True), clip_values=(0.0, 1.0))
  apgd = lambda loss: AutoProjectedGradientDescent(
      estimator, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=num_steps, targeted=False,
      nb_random_init=1, batch_size=batch, loss_type=loss, verbose=False)
  attacks = [apgd('cross_entropy'), apgd('difference_logits_ratio'),
             SquareAttack(estimator, norm=np.inf, eps=eps, max_iter=square_queries, p_init=0.8,
                          nb_restarts=1, batch_size=batch, verbose=False)]
  attack = AutoAttack(estimator, norm=np.inf, eps=eps, eps_step=2 * eps, attacks=attacks,
                      batch_size=batch, targeted=True)
  wall, cpu = time.time(), time.process_time()
  x_adv = attack.generate(x.copy(), y)
  wall, cpu = time.time() - wall, time.process_time() - cpu
  correct = np.argmax(estimator.predict(x_adv, batch_size=batch), -1) == y
  return {'robust_accuracy': float(correct.mean()), 'wall_s': wall, 'cpu_s': cpu,
          'max_linf': float(np.abs(x_adv - x).max()),
          'in_range': bool(x_adv.min() >= 0.0 and x_adv.max() <= 1.0),
          'robust': correct, 'version': art.__version__,
          'config': {'attacks': ['apgd_ce', 'apgd_dlr', 'square'], 'targeted': True,
                     'num_steps': num_steps, 'nb_random_init': 1, 'eps_step': 2 * eps,
                     'square_queries': square_queries, 'square_p_init': 0.8}}


def compare(ours, theirs):
  """Agreement figures of two results with 'robust' bool [N] arrays."""
  a, b = ours['robust'], theirs['robust']
  return {'difference_points': 100.0 * (ours['robust_accuracy'] - theirs['robust_accuracy']),
          'robust_only_ours': int(np.sum(a & ~b)), 'robust_only_art': int(np.sum(~a & b)),
          'speedup_wall': theirs['wall_s'] / ours['wall_s'],
          'speedup_cpu': theirs['cpu_s'] / ours['cpu_s']}


def thread_settings() -> dict[str, int]:
  """TensorFlow's intra- and inter-op thread counts, 0 = its default (all cores).

  Set through tf.config or through TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS, which the
  runtime reads but tf.config's getters do not report.
  """
  def setting(getter, variable):
    return getter() or int(os.environ.get(variable, '0') or 0)
  return {'intra_op': setting(tf.config.threading.get_intra_op_parallelism_threads,
                              'TF_NUM_INTRAOP_THREADS'),
          'inter_op': setting(tf.config.threading.get_inter_op_parallelism_threads,
                              'TF_NUM_INTEROP_THREADS')}


def threads(setting) -> str:
  """'1 intra-op, 1 inter-op' or 'default (all cores)' from the JSON's thread counts."""
  intra, inter = setting['intra_op'], setting['inter_op']
  if intra == 0 and inter == 0:
    return 'default (all cores)'
  return f"{intra or 'default'} intra-op, {inter or 'default'} inter-op"


def to_markdown(result) -> str:
  ours, theirs, cmp = result['ours'], result.get('art'), result.get('comparison')
  lines = [f"# AutoAttack: aad-tf native vs ART {theirs['version'] if theirs else ''}", '',
           f"{result['num_examples']} MNIST test images, eps {result['eps']}, model "
           f"`{result['model']}`, seed {result['seed']}; TensorFlow threads: "
           f"{threads(result['threads'])}.", '',
           f"Square's forward passes: {result.get('square_plan', 'not recorded')}.", '',
           f"Command: `{result['command']}`", '',
           '| | robust accuracy (%) | wall (s) | CPU (s) | max L-inf |', '|---|---|---|---|---|',
           f"| aad-tf (standard: APGD-CE, APGD-T, FAB-T, Square) | "
           f"{100 * ours['robust_accuracy']:.1f} | {ours['wall_s']:.0f} | {ours['cpu_s']:.0f} | "
           f"{ours['max_linf']:.4f} |"]
  if theirs:
    lines.append(f"| ART AutoAttack (APGD-CE, APGD-DLR, Square; targeted x{9}) | "
                 f"{100 * theirs['robust_accuracy']:.1f} | {theirs['wall_s']:.0f} | "
                 f"{theirs['cpu_s']:.0f} | {theirs['max_linf']:.4f} |")
  lines += ['', 'Accuracy (%) after each of our stages: ' + ', '.join(
      f"{name} {100 * ours['accuracy_after'][name]:.1f}" for name in ('clean', *autoattack.STAGES))]
  if 'stages' in result:
    lines += ['', 'Each of our stages compiled and timed alone (`--stage_times`):', '',
              '| stage | examples | CPU (s) | wall (s) | accuracy after (%) |',
              '|---|---|---|---|---|']
    lines += [f"| {name} | {t['examples']} | {t['cpu_s']:.1f} | {t['wall_s']:.1f} | "
              f"{100 * t['accuracy_after']:.1f} |" for name, t in result['stages'].items()]
  if cmp:
    lines += ['', f"Difference {cmp['difference_points']:+.1f} points (ours - ART); robust only "
              f"for ours: {cmp['robust_only_ours']}, only for ART: {cmp['robust_only_art']}. "
              f"ART / ours: {cmp['speedup_wall']:.2f}x wall time, {cmp['speedup_cpu']:.2f}x "
              f"CPU time."]
  lines += ['', NOTES]
  return '\n'.join(lines) + '\n'


NOTES = '''## What is compared

- **aad-tf**: `aad_tf.attacks.autoattack`, the standard version as the reference `run_standard_evaluation`
  runs it: APGD-CE (100 iterations, 1 random start), APGD-T (targeted DLR towards the 9 classes
  ranked highest after the first on the clean input, 100 iterations each), FAB-T (the same 9
  targets, 100 iterations each, alpha_max 0.1, eta 1.05, beta 0.9), Square (5000 queries,
  p_init 0.8, p's schedule not rescaled to the budget, one window per iteration for all
  examples), each only on the examples still robust; one compiled graph, the time includes
  tracing. `trainers.evaluate --attacks=autoattack` runs the same function.
- **ART 1.20**: `art.attacks.evasion.AutoAttack` with the closest configuration ART has. ART has
  neither APGD-T's targeted DLR loss nor FAB (its default list uses DeepFool and 5 restarts
  of everything), so it runs `attacks=[APGD-CE, APGD-DLR, Square]` (100 iterations, 1 random
  start, step 2 eps; Square 5000 iterations, p_init 0.8, 1 restart) with `targeted=True`: the
  three untargeted, then APGD-CE and APGD-DLR towards each of the 9 other classes (ART's Square
  cannot be targeted and is skipped there with a warning), each on the examples still robust.
  That is more attack runs than the standard version, without FAB-T.
- Both in this one process, ours first, with the same TensorFlow threads (the header; set them
  with TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS). CPU time (process time) is the fairer
  ratio on a machine that other jobs share; wall time is what a user waits.
- Why ours is faster, per example and iteration (model passes; a gradient pass costs about 2
  forward passes on this LeNet): APGD 1 gradient pass, and none once the example is fooled (ART:
  1 gradient and 1 forward pass for every example in every iteration); FAB-T 1 gradient and 1
  forward pass, with its projection solved by bisection instead of a sort
  (`fab.project_linf`); Square 1 query per iteration (ART: 3 forward passes), and since all
  examples share the iteration's window (as in AutoAttack's Square), a query recomputes only
  the activations the window reaches (`attacks/windowed.py`: on this LeNet a 1-3 pixel window
  costs 40-60 % of a forward pass; the header says which plan the model got). Our input
  gradients through a convolution of a one-channel image use a depthwise convolution
  (`attacks/conv_gradient.py`), faster than TensorFlow's CPU kernel, which ART's gradients go
  through. Everything is one compiled graph with no host copies; ART runs eagerly and copies to
  NumPy on every call.
- ART's `AutoAttack.generate` imports `multiprocess`, which ART does not declare: the `[peers]`
  extra installs it.'''


def main(argv):
  del argv
  if not FLAGS.model:
    raise app.UsageError('--model is required.')
  keras.utils.set_random_seed(FLAGS.seed)
  classifier = keras.models.load_model(FLAGS.model, safe_mode=True, compile=False)
  arrays = data_lib.load_arrays('mnist', data_dir=FLAGS.data_dir)
  x = arrays.x_test[:FLAGS.num_examples].astype(np.float32)
  y = arrays.y_test[:FLAGS.num_examples].astype(np.int32)
  budgets = dict(eps=FLAGS.eps, seed=FLAGS.seed, num_steps=FLAGS.num_steps,
                 square_queries=FLAGS.square_queries)
  result = {'model': FLAGS.model, 'num_examples': len(x), 'eps': FLAGS.eps, 'seed': FLAGS.seed,
            'command': ' '.join(['python -m benchmarks.autoattack_vs_art'] + sys.argv[1:]),
            'clean_accuracy': float(np.mean(np.argmax(classifier.predict(x, verbose=0), -1)
                                            == y)),
            'versions': {'python': platform.python_version(), 'tensorflow': tf.__version__,
                         'keras': keras.__version__, 'numpy': np.__version__},
            'threads': thread_settings(),
            'square_plan': windowed.plan(lambda images: classifier(images, training=False),
                                         classifier, x.shape[1:]).describe(),
            'load_average_start': list(os.getloadavg())}
  ours = run_ours(classifier, x, y, **budgets)
  result['ours'] = ours
  logging.info('ours: robust accuracy %.4f in %.1f s wall, %.1f s CPU.', ours['robust_accuracy'],
               ours['wall_s'], ours['cpu_s'])
  write(result)
  if FLAGS.stage_times:
    result['stages'] = run_stages(classifier, x, y, **budgets)
    write(result)
  if FLAGS.art:
    theirs = run_art(classifier, x, y, **budgets)
    result['art'] = theirs
    result['comparison'] = compare(ours, theirs)
    logging.info('ART %s: robust accuracy %.4f in %.1f s wall, %.1f s CPU.', theirs['version'],
                 theirs['robust_accuracy'], theirs['wall_s'], theirs['cpu_s'])
  result['load_average_end'] = list(os.getloadavg())
  write(result)
  print(to_markdown(result))


def write(result):
  if not FLAGS.output:
    return
  serialisable = json.loads(json.dumps(result, default=lambda v: v.tolist()
                                       if isinstance(v, np.ndarray) else str(v)))
  for part in ('ours', 'art'):
    if part in serialisable:
      serialisable[part]['robust'] = ''.join('1' if r else '0' for r in result[part]['robust'])
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
  with open(FLAGS.output + '.json', 'w') as f:
    json.dump(serialisable, f, indent=2, sort_keys=True)
  with open(FLAGS.output + '.md', 'w') as f:
    f.write(to_markdown(result))


if __name__ == '__main__':
  define_flags()
  app.run(main)
