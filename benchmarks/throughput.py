r"""Training, Grad-CAM and attack throughput, measured in one run so that ratios are meaningful.

  python -m benchmarks.throughput --data_dir=../shared/data       # LeNet/MNIST and ResNet9/CIFAR-10
  python -m benchmarks.throughput --models=lenet:mnist:100 --steps=5
  python -m benchmarks.throughput --mixed_precision=float32,bfloat16 --variants=raw,madry,madry_aad

Precision (--mixed_precision, a list): each training variant and each attack (PGD-k, APGD-CE)
is built once per precision (float32, or mixed_bfloat16 with float32 variables; the same weights)
and all of them are timed in the same round-robin, so the bfloat16 / float32 ratios come from one
run. The header names the CPU and its bfloat16 support (AMX, AVX512_BF16 or none: emulated, so
slower than float32); the JSON records both. The other measurements (ratios to madry, aad/*
diagnostics, Grad-CAM, the FLOP fractions) are those of the first precision.

For each --models entry (model:dataset:batch, or model:dataset:batch:width for a backbone
that takes a width, e.g. resnet9:cifar10:100:16), and for each training variant (raw, madry,
madry+aad, alp, alp+aad at the same PGD steps), the compiled
train step is warmed up, then the variants are timed round-robin for --rounds rounds of --steps
steps each (interleaving spreads machine noise over all variants); the median images/s is reported
with its ratio to madry. Also: Grad-CAM throughput (forward + backward to the Grad-CAM layer), and
PGD-k attack throughput as images/s and as a fraction of the machine's measured FLOP rate (model
FLOPs counted analytically for Conv2D/Dense layers; one PGD step = one forward pass plus the
gradient with respect to the input alone, which costs about one more forward pass: 2 in all, since
an attack needs no weight gradients). The reference
rates are measured in the same run: the best of float32 matmuls of several sizes, and a large 3x3
convolution (oneDNN's convolutions can run faster than its matmul, so a model's PGD can exceed
the matmul rate; the larger of the two is reported as the machine's rate).
"""

import inspect
import json
import os
import statistics
import time
from typing import NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from aad_tf import attacks
from aad_tf.attacks import apgd as apgd_lib
from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import gradcam as gradcam_lib
from aad_tf import models
from aad_tf import precision

FLAGS = flags.FLAGS


def define_flags():
  """The benchmark's flags (a function, so that tests can import this module)."""
  flags.DEFINE_list('models', ['lenet:mnist:100', 'resnet9:cifar10:32'],
                    'model:dataset:batch[:width] entries, benchmarked one after another in this run.')
  flags.DEFINE_string('data_dir', None, 'Directory with <dataset>.npz; random images if unset.')
  flags.DEFINE_integer('pgd_steps', 10, 'PGD steps of every adversarial variant and attack.')
  flags.DEFINE_integer('steps', 5, 'Timed train steps per variant per round.')
  flags.DEFINE_integer('rounds', 3, 'Round-robin rounds.')
  flags.DEFINE_list('variants', ['raw', 'madry', 'madry_aad', 'madry_aad_training', 'alp',
                                 'alp_aad', 'alp_aad_training'],
                    "Training variants: <defense>[_aad[_training]]; _aad runs AAD's attention "
                    "passes in inference mode (the default), _aad_training in training mode (the "
                    "earlier step: no extra classification pass, dropout noise, four BatchNorm "
                    "updates).")
  flags.DEFINE_integer('log_every', 100,
                       'The interval at which the aad/* diagnostics cost is reported.')
  flags.DEFINE_list('mixed_precision', ['float32'],
                    'Precisions to compare in one run: float32, bfloat16 (mixed_bfloat16) or '
                    'auto (this machine\'s choice, see aad_tf.precision).')
  flags.DEFINE_integer('apgd_steps', 20, 'APGD-CE iterations of the attack timing (0: skip).',
                       lower_bound=0)
  flags.DEFINE_string('output', None, 'Optional JSON output path.')
  flags.DEFINE_enum('clock', 'auto', ['auto', 'wall', 'cpu'],
                    'Timer: process CPU time is robust to other jobs sharing a CPU-only machine; '
                    'auto = cpu without a GPU, wall with one.')


def model_flops(model: keras.Model) -> float:
  """Forward FLOPs per image (2 x multiply-adds) of the Conv2D and Dense layers."""
  total = 0.0
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      kh, kw = layer.kernel_size
      _, h, w, c_out = layer.output.shape
      c_in = layer.input.shape[-1]
      total += 2.0 * h * w * kh * kw * c_in * c_out / (layer.groups or 1)
    elif isinstance(layer, keras.layers.Dense):
      total += 2.0 * layer.input.shape[-1] * layer.units
  return total


# Forward + input-gradient backward (Conv2DBackpropInput / MatMul against the weights, each about
# the forward's FLOPs); no Conv2DBackpropFilter, since an attack differentiates only in x.
PASSES_PER_PGD_STEP = 2


def matmul_flops_per_second(sizes=(1024, 2048, 4096), repeats: int = 3, timer=time.perf_counter
                            ) -> float:
  """Best float32 matmul FLOP rate over `sizes` (n x n times n x n)."""
  best = 0.0
  for n in sizes:
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    fn = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    fn().numpy()
    started = timer()
    for _ in range(repeats):
      fn().numpy()
    best = max(best, 2.0 * n ** 3 * repeats / (timer() - started))
  return best


def conv_flops_per_second(repeats: int = 3, timer=time.perf_counter) -> float:
  """FLOP rate of a large 3x3, 256 -> 256 channel convolution (batch 64 of 16 x 16 maps)."""
  x = tf.random.normal([64, 16, 16, 256])
  w = tf.random.normal([3, 3, 256, 256])
  fn = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, w, 1, 'SAME')))
  fn().numpy()
  started = timer()
  for _ in range(repeats):
    fn().numpy()
  return 2.0 * 64 * 16 * 16 * 9 * 256 * 256 * repeats / (timer() - started)


class ModelEntry(NamedTuple):
  name: str
  info: data_lib.DatasetInfo
  batch: int
  width: Optional[int] = None  # the backbone's `width` (ResNet9's first stage), None: its default

  def model_kwargs(self) -> dict:
    return {} if self.width is None else {'width': self.width}


def parse_models(entries) -> list:
  """'model:dataset:batch[:width]' strings -> [ModelEntry]; bad entries are UsageErrors."""
  parsed = []
  for entry in entries:
    parts = entry.split(':')
    if (len(parts) not in (3, 4) or not all(p.isdigit() and int(p) >= 1 for p in parts[2:])):
      raise app.UsageError(f'--models entry {entry!r} is not model:dataset:batch[:width], e.g. '
                           'lenet:mnist:100 or resnet9:cifar10:100:16')
    name, dataset, batch = parts[0], parts[1], int(parts[2])
    width = int(parts[3]) if len(parts) == 4 else None
    if name not in models.available_models():
      raise app.UsageError(f'--models: unknown model {name!r}; known: {", ".join(models.available_models())}')
    if width is not None and 'width' not in inspect.signature(models.get_spec(name).builder).parameters:
      raise app.UsageError(f'--models entry {entry!r}: model {name!r} takes no width.')
    try:
      info = data_lib.get_info(dataset)
    except ValueError as e:
      raise app.UsageError(f'--models: {e}') from e
    parsed.append(ModelEntry(name, info, batch, width))
  return parsed


def make_batch(info, batch_size: int):
  if FLAGS.data_dir:
    arrays = data_lib.load_arrays(info.name, data_dir=FLAGS.data_dir, source='npz')
    x, y = arrays.x_train[:batch_size], arrays.y_train[:batch_size]
  else:
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, *info.image_shape), np.float32)
    y = rng.integers(0, info.num_classes, batch_size).astype(np.int32)
  return tf.constant(x), tf.constant(y)


def parse_precisions(values):
  """--mixed_precision entries -> resolved, distinct precisions; bad ones are UsageErrors."""
  try:
    resolved = [precision.resolve(v) for v in values]
  except ValueError as e:
    raise app.UsageError(f'--mixed_precision: {e}') from e
  return list(dict.fromkeys(resolved))


def build_classifier(model_name: str, info, dtype: str = 'float32', **model_kwargs) -> keras.Model:
  """The backbone in `dtype` ('float32' or 'bfloat16'), with the same weights in both."""
  keras.utils.set_random_seed(0)
  with precision.dtype_policy(precision.keras_policy(dtype)):
    return models.get_model(model_name, input_shape=info.image_shape,
                            num_classes=info.num_classes, **model_kwargs)


def build_trainer(model_name: str, variant: str, info,
                  dtype: str = 'float32', **model_kwargs) -> defense_lib.AADModel:
  defense, _, aad = variant.partition('_')
  aad, _, mode = aad.partition('_')
  defense = 'none' if defense == 'raw' else defense
  classifier = build_classifier(model_name, info, dtype, **model_kwargs)
  eps = info.eval_eps  # the registry entry's evaluation budget
  config = defense_lib.DefenseConfig(
      defense=defense, aad=aad == 'aad', attention_mode=mode or 'inference',
      attack=defense_lib.AttackConfig(eps=eps, step_size=eps / 4, num_steps=FLAGS.pgd_steps))
  model = defense_lib.AADModel(classifier, models.get_spec(model_name).gradcam_layer, config)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  return model


def clock():
  use_cpu = FLAGS.clock == 'cpu' or (FLAGS.clock == 'auto' and
                                     not tf.config.list_physical_devices('GPU'))
  return time.process_time if use_cpu else time.perf_counter


def time_call(fn, repeats: int) -> float:
  """Seconds for `repeats` calls. With the CPU clock, images/s are per CPU-second of this
  process (all cores), a measure of work that other processes on the machine do not distort."""
  timer = clock()
  started = timer()
  for _ in range(repeats):
    out = fn()
  tf.nest.map_structure(lambda t: t.numpy(), out)
  return timer() - started


def benchmark_model(entry: ModelEntry, rates: dict) -> dict:
  """Train-step, Grad-CAM, forward and PGD throughput of one backbone; `rates` in FLOP/s."""
  model_name, info, b, kw = entry.name, entry.info, entry.batch, entry.model_kwargs()
  x, y = make_batch(info, b)
  results = {'model': model_name, 'dataset': info.name, 'batch_size': b, 'width': entry.width}

  # Training steps and attacks of every precision, round-robin.
  precisions = parse_precisions(FLAGS.mixed_precision)
  eps = info.eval_eps  # the registry entry's evaluation budget
  calls = {}
  for dtype in precisions:
    for variant in FLAGS.variants:
      step = tf.function(build_trainer(model_name, variant, info, dtype, **kw).train_step,
                         reduce_retracing=True)
      calls[('train', variant, dtype)] = (lambda step=step: step((x, y))['loss'], FLAGS.steps)
    attacked = build_classifier(model_name, info, dtype, **kw)
    attacked_fn = lambda images, c=attacked: c(images, training=False)
    calls[('attack', f'pgd{FLAGS.pgd_steps}', dtype)] = (tf.function(lambda f=attacked_fn: attacks.pgd(
        f, x, y, eps=eps, step_size=eps / 4, num_steps=FLAGS.pgd_steps)), 1)
    if FLAGS.apgd_steps:
      calls[('attack', 'apgd_ce', dtype)] = (tf.function(lambda f=attacked_fn: apgd_lib.apgd(
          f, x, y, eps=eps, num_steps=FLAGS.apgd_steps, seed=tf.constant([0, 0], tf.int64))), 1)
  for fn, _ in calls.values():
    tf.nest.map_structure(lambda t: t.numpy(), fn())  # trace + warm up
  times = {key: [] for key in calls}
  for _ in range(FLAGS.rounds):
    for key, (fn, repeats) in calls.items():
      times[key].append(b * repeats / time_call(fn, repeats))
  by_precision = {dtype: {'train_images_per_s': {}, 'attack_images_per_s': {}}
                  for dtype in precisions}
  for (kind, name, dtype), rates_ in times.items():
    by_precision[dtype][f'{kind}_images_per_s'][name] = statistics.median(rates_)
  results['precisions'] = by_precision
  results['precision_rounds'] = {f'{kind}/{name}/{dtype}': r
                                 for (kind, name, dtype), r in times.items()}
  if 'float32' in by_precision and 'bfloat16' in by_precision:
    f32, bf16 = by_precision['float32'], by_precision['bfloat16']
    results['bfloat16_speedup'] = {
        kind: {name: bf16[kind][name] / f32[kind][name] for name in f32[kind]}
        for kind in ('train_images_per_s', 'attack_images_per_s')}
  first = precisions[0]
  steps = {v: None for v in FLAGS.variants}
  times = {v: times[('train', v, first)] for v in FLAGS.variants}
  train = dict(by_precision[first]['train_images_per_s'])
  results['train_images_per_s'] = train
  results['train_images_per_s_rounds'] = times
  if 'madry' in train:
    results['train_time_ratio_vs_madry'] = {v: train['madry'] / s for v, s in train.items()}
  for base in ('madry', 'alp'):
    if base in train and f'{base}_aad' in train:
      results[f'aad_time_ratio_vs_{base}'] = train[base] / train[f'{base}_aad']
    if f'{base}_aad' in train and f'{base}_aad_training' in train:
      # The cost of noise-free attention passes and one BatchNorm update over the earlier step.
      results[f'{base}_aad_inference_vs_training_time'] = (train[f'{base}_aad_training'] /
                                                           train[f'{base}_aad'])

  # The aad/* diagnostics (summaries.TrainSummaries, every --log_every steps) against a step.
  aad_variant = next((v for v in steps if v.endswith('_aad')), None)
  if aad_variant:
    model = build_trainer(model_name, aad_variant, info, first, **kw)
    diagnostics = lambda: model.aad_diagnostics(x, y)['grad_ratio_pres']
    diagnostics()  # trace
    reps = max(FLAGS.steps, 3)
    call_seconds = time_call(diagnostics, reps) / reps
    step_seconds = b / train[aad_variant]
    results['aad_diagnostics'] = {
        'variant': aad_variant, 'seconds_per_call': call_seconds,
        'calls_per_step_time': call_seconds / step_seconds, 'log_every': FLAGS.log_every,
        'fraction_of_training_time': call_seconds / (FLAGS.log_every * step_seconds)}

  # Grad-CAM and attack throughput on one classifier.
  classifier = models.get_model(model_name, input_shape=info.image_shape,
                                num_classes=info.num_classes, **kw)
  features = gradcam_lib.FeatureModel(classifier, models.get_spec(model_name).gradcam_layer)
  cam_fn = tf.function(lambda images, labels: gradcam_lib.gradcam(features.fn(), images, labels)[0])
  model_fn = lambda images: classifier(images, training=False)
  pgd_fn = tf.function(lambda images, labels: attacks.pgd(
      model_fn, images, labels, eps=eps, step_size=eps / 4, num_steps=FLAGS.pgd_steps))
  fwd_fn = tf.function(lambda images: model_fn(images))
  for fn, args in ((cam_fn, (x, y)), (pgd_fn, (x, y)), (fwd_fn, (x,))):
    fn(*args)
  reps = max(FLAGS.steps, 3)
  results['forward_images_per_s'] = b * reps / time_call(lambda: fwd_fn(x), reps)
  results['gradcam_images_per_s'] = b * reps / time_call(lambda: cam_fn(x, y), reps)
  pgd_rate = b * reps / time_call(lambda: pgd_fn(x, y), reps)
  results[f'pgd{FLAGS.pgd_steps}_images_per_s'] = pgd_rate
  flops = model_flops(classifier)
  achieved = pgd_rate * flops * PASSES_PER_PGD_STEP * FLAGS.pgd_steps
  results.update({
      'model_forward_gflop_per_image': flops / 1e9,
      'pgd_achieved_gflop_per_s': achieved / 1e9,
      'pgd_fraction_of_matmul_rate': achieved / rates['matmul'],
      'pgd_fraction_of_conv_rate': achieved / rates['conv'],
      'pgd_fraction_of_machine_rate': achieved / max(rates.values()),
  })
  return results


def precision_table(r: dict, clock_name: str) -> str:
  """Images per second (per CPU-second with the cpu clock) of each precision, and their ratio."""
  names = list(r['precisions'])
  per = 'CPU-second' if clock_name == 'cpu' else 'second'
  ratio = 'bfloat16 / float32' if {'float32', 'bfloat16'} <= set(names) else None
  lines = [f'| {r["model"]} (batch {r["batch_size"]}) | ' +
           ' | '.join(f'{n} images per {per}' for n in names) + (f' | {ratio} |' if ratio else ' |'),
           '|---|' + '---|' * (len(names) + bool(ratio))]
  for kind, label in (('train_images_per_s', 'train step {}'), ('attack_images_per_s', '{}')):
    for name in r['precisions'][names[0]][kind]:
      cells = [f'{r["precisions"][n][kind][name]:.1f}' for n in names]
      if ratio:
        cells.append(f'{r["bfloat16_speedup"][kind][name]:.2f}x')
      shown = (f'APGD-CE ({FLAGS.apgd_steps} iterations)' if name == 'apgd_ce' else
               name.replace('pgd', 'PGD-'))
      lines.append(f'| {label.format(shown)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def report(r: dict, clock_name: str) -> str:
  k = FLAGS.pgd_steps
  width = '' if r.get('width') is None else f' (width {r["width"]})'
  lines = [f'{r["model"]}{width}/{r["dataset"]}, batch {r["batch_size"]}, PGD-{k}, {clock_name} clock',
           precision_table(r, clock_name), '',
           f'{next(iter(r["precisions"]))}:',
           '| variant | images/s | step time vs madry |', '|---|---|---|']
  for v, rate in r['train_images_per_s'].items():
    ratio = r.get('train_time_ratio_vs_madry', {}).get(v, float('nan'))
    lines.append(f'| {v} | {rate:.1f} | {ratio:.2f}x |')
  for base in ('madry', 'alp'):
    if f'aad_time_ratio_vs_{base}' in r:
      lines.append(f'{base}+aad step time / {base}: {r[f"aad_time_ratio_vs_{base}"]:.2f}x')
    if f'{base}_aad_inference_vs_training_time' in r:
      lines.append(f'{base}+aad inference-mode attention passes / training-mode (earlier step): '
                   f'{r[f"{base}_aad_inference_vs_training_time"]:.2f}x step time')
  if 'aad_diagnostics' in r:
    d = r['aad_diagnostics']
    lines.append(f'aad/* diagnostics: {d["calls_per_step_time"]:.2f} step times per call, '
                 f'{100 * d["fraction_of_training_time"]:.2f}% of training time at '
                 f'--log_every={d["log_every"]}')
  fwd, cam = r['forward_images_per_s'], r['gradcam_images_per_s']
  lines += [f'forward: {fwd:.0f} images/s; Grad-CAM: {cam:.0f} images/s ({cam / fwd:.2f}x forward)',
            f'PGD-{k}: {r[f"pgd{k}_images_per_s"]:.1f} images/s = '
            f'{r["pgd_achieved_gflop_per_s"]:.1f} GFLOP/s, '
            f'{100 * r["pgd_fraction_of_matmul_rate"]:.0f}% of the measured matmul rate, '
            f'{100 * r["pgd_fraction_of_conv_rate"]:.0f}% of the measured conv rate']
  return '\n'.join(lines)


def main(argv):
  del argv
  entries = parse_models(FLAGS.models)
  timer = clock()
  clock_name = 'cpu' if timer is time.process_time else 'wall'
  rates = {'matmul': matmul_flops_per_second(timer=timer), 'conv': conv_flops_per_second(timer=timer)}
  cpu = precision.read_cpuinfo()
  results = {'cpu': {'model_name': cpu.model_name, 'bf16_support': cpu.bf16_support,
                     'logical_cpus': os.cpu_count()},
             'mixed_precision': parse_precisions(FLAGS.mixed_precision),
             'apgd_steps': FLAGS.apgd_steps,
             'clock': clock_name, 'pgd_steps': FLAGS.pgd_steps, 'steps': FLAGS.steps,
             'rounds': FLAGS.rounds, 'tensorflow': tf.__version__, 'keras': keras.__version__,
             'matmul_gflop_per_s': rates['matmul'] / 1e9, 'conv_gflop_per_s': rates['conv'] / 1e9,
             'models': []}
  print(f'CPU: {precision.describe_cpu(cpu)}; precisions {", ".join(results["mixed_precision"])}',
        flush=True)
  print(f'machine: matmul {rates["matmul"] / 1e9:.0f} GFLOP/s, 3x3 conv '
        f'{rates["conv"] / 1e9:.0f} GFLOP/s ({clock_name} clock), TF {tf.__version__}')
  for entry in entries:
    r = benchmark_model(entry, rates)
    results['models'].append(r)
    print('\n' + report(r, clock_name), flush=True)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(results, f, indent=2)
    logging.info('Wrote %s.', FLAGS.output)  # the results are printed once, above


if __name__ == '__main__':
  define_flags()
  app.run(main)
