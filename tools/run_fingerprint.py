r"""Fingerprint of short deterministic training runs: the check that a refactor changed nothing.

  python tools/run_fingerprint.py --source=. --work=/tmp/fp_new --out=/tmp/fp_new.json

Trains each run of RUNS below for 20 steps with --deterministic from the source tree --source
(its trainers.main, run as a subprocess with that tree first on sys.path), then records

  * every checkpoint variable of the final checkpoint as the SHA-256 of its bytes, as a sorted
    multiset of (shape, dtype, hash) so that a renamed attribute path does not hide or fake a
    change (the names are recorded separately), and
  * eval.json without its timing fields (`seconds`, `wall_time_s`).

tools/behaviour_unchanged.sh runs this for two commits on one machine and compares the two
files: bit-identical weights and the same eval.json, or a non-zero exit. The fingerprint is
only comparable on one machine (oneDNN kernels differ between CPU kinds), so no fingerprint is
committed; the script is.

It depends on nothing in aad_tf, so it reads both the old and the new layout.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys

STEPS = 20
# name -> trainers.main flags. Madry+AAD (scaled maps, diagnostics on), a registered base
# defense (TRADES), ALP+AAD on a BatchNorm backbone (ResNet9, CIFAR-10).
RUNS = {
    'mnist_madry_aad': ['--flagfile=flags/mnist_madry_aad_cpu.cfg',
                        '--gradcam_normalize=rms_softmax', '--alpha=0.1', '--beta=0.1',
                        '--eval_attacks=clean,fgsm,pgd10,pgd_a3', '--log_every=10',
                        '--aad_diagnostics_examples=20'],
    'mnist_trades': ['--flagfile=flags/mnist_trades.cfg', '--train_num_steps=3',
                     '--eval_attacks=clean,pgd10'],
    'cifar10_alp_aad': ['--flagfile=flags/cifar10_alp_aad.cfg', '--batch_size=16',
                        '--train_num_steps=2', '--eval_attacks=clean,pgd10',
                        '--aad_diagnostics_examples=0'],
}
TIMING_KEYS = ('seconds', 'wall_time_s')


def _strip_timing(value):
  if isinstance(value, dict):
    return {k: _strip_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
  if isinstance(value, list):
    return [_strip_timing(v) for v in value]
  return value


def _checkpoint_fingerprint(model_dir):
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  path = tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))
  if path is None:
    raise SystemExit(f'no checkpoint in {model_dir}/checkpoints')
  reader = tf.train.load_checkpoint(path)
  entries, names = [], []
  for name, _ in tf.train.list_variables(path):
    if name.startswith('_CHECKPOINTABLE_OBJECT_GRAPH'):
      continue
    value = np.asarray(reader.get_tensor(name))
    if value.dtype == object:  # strings (e.g. a saved iterator): hash their text
      digest = hashlib.sha256(repr(value.tolist()).encode()).hexdigest()
    else:
      digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
    entries.append([list(value.shape), str(value.dtype), digest])
    names.append(name)
  return {'checkpoint': os.path.basename(path), 'variables': sorted(entries),
          'names': sorted(names)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--source', required=True, help='source tree to train from')
  parser.add_argument('--work', required=True, help='directory for the run directories')
  parser.add_argument('--out', required=True, help='fingerprint JSON to write')
  parser.add_argument('--data_dir', default=os.path.abspath('../shared/data'))
  parser.add_argument('--runs', default=','.join(RUNS), help='comma-separated subset of RUNS')
  args = parser.parse_args()
  source = os.path.abspath(args.source)
  env = dict(os.environ, PYTHONPATH=source, TF_CPP_MIN_LOG_LEVEL='2')
  result = {}
  for name in args.runs.split(','):
    model_dir = os.path.join(os.path.abspath(args.work), name)
    if os.path.exists(model_dir):
      raise SystemExit(f'{model_dir} exists: use a fresh --work directory')
    command = [sys.executable, '-m', 'trainers.main', *RUNS[name], f'--train_steps={STEPS}',
               '--deterministic', '--seed=0', '--eval_examples=50', '--checkpoint_every=10',
               f'--data_dir={args.data_dir}', f'--model_dir={model_dir}']
    print(' '.join(command), flush=True)
    subprocess.run(command, cwd=source, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(model_dir, 'eval.json')) as f:
      evaluation = _strip_timing(json.load(f))
    result[name] = {'weights': _checkpoint_fingerprint(model_dir), 'eval': evaluation}
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
