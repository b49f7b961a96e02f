"""The study scripts keep their runs under $AAD_TF_RUNS and resume what they find there.

A new session lays the checkout anew; the runs live outside it. These tests run the real script
(docs/results/cifar10_study.sh) at a tiny budget from a copy of the checkout, as a new session
would, and check that a finished run is not retrained and an unfinished one resumes.
"""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ('--train_steps=2 --batch_size=8 --eval_examples=4 --eval_attacks=clean '
        '--summary_images=0 --checkpoint_every=1 --overfit_guard=off')


def checkout_copy(path):
  """A copy of the checkout's scripts, flags and code, as a new session's checkout."""
  for name in ('aad_tf', 'trainers', 'flags', 'docs/results'):
    shutil.copytree(os.path.join(ROOT, name), os.path.join(path, name),
                    ignore=shutil.ignore_patterns('__pycache__', '*.json', '*.png', '*.md'))
  return str(path)


def study(checkout, runs_root, data_dir, *args):
  env = dict(os.environ, AAD_TF_RUNS=str(runs_root), EXTRA=TINY, EVAL_EXAMPLES='4',
             DATA=str(data_dir), TF_NUM_INTRAOP_THREADS='1',
             TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('RUNS', None)
  result = subprocess.run([os.path.join(checkout, 'docs/results/cifar10_study.sh'), *args],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def test_cifar10_study_resumes_from_aad_tf_runs_in_a_new_checkout(tmp_path, shared_data_dir):
  runs_root = tmp_path / 'aad-tf-runs'
  first = checkout_copy(tmp_path / 'checkout1')
  study(first, runs_root, shared_data_dir, 'madry_s0')
  run = runs_root / 'cifar10_study' / 'madry_s0'
  assert (run / 'eval.json').exists() and (run / 'screen' / 'robustness.json').exists()
  finished = (run / 'eval.json').stat().st_mtime_ns

  # A new checkout, the same $AAD_TF_RUNS: `resume` finds the run and neither trains nor
  # evaluates it again.
  second = checkout_copy(tmp_path / 'checkout2')
  log = study(second, runs_root, shared_data_dir, 'resume')
  assert 'resuming under' in log and 'madry_s0' in log
  assert 'Training cifar10' not in log and 'Running ' not in log
  assert (run / 'eval.json').stat().st_mtime_ns == finished

  # A run killed before its end (no eval.json, an evaluation missing) resumes from its last
  # checkpoint (here the last step: nothing left to train), not from step 0.
  (run / 'eval.json').unlink()
  shutil.rmtree(run / 'screen')
  log = study(second, runs_root, shared_data_dir, 'resume')
  assert 'Run already complete (step 2 of 2)' in log and 'from step 0' not in log
  assert (run / 'screen' / 'robustness.json').exists()


def test_cifar10_study_run_names_give_the_settings(tmp_path):
  runs_root = tmp_path / 'aad-tf-runs'
  env = dict(os.environ, AAD_TF_RUNS=str(runs_root))
  env.pop('RUNS', None)
  script = os.path.join(ROOT, 'docs/results/cifar10_study.sh')
  run = lambda *args: subprocess.run([script, '--dry_run', *args], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=60)
  result = run('aadtrain_rms_softmax_a0.1_b0.1_s2', 'aad_none_a0.01_b0.01_s0', 'madry_s1',
               'aadbatch_rms_softmax_a0.1_b0.1_s0')
  assert result.returncode == 0, result.stderr
  train = [line for line in result.stdout.splitlines() if 'trainers.main' in line]
  assert len(train) == 4
  assert '--alpha=0.1 --beta=0.1 --seed=0 --attention_mode=batch' in train[3]
  assert ('--gradcam_normalize=rms_softmax --alpha=0.1 --beta=0.1 --seed=2 '
          '--attention_mode=training') in train[0]
  assert '--gradcam_normalize=none --alpha=0.01 --beta=0.01 --seed=0 --data_dir' in train[1]
  assert 'attention_mode' not in train[1] + train[2]
  assert 'cifar10_madry_cpu.cfg --seed=1' in train[2]
  # Seeds >= 1 get the study suite after the screen; seed 0 (no seed-1 run) the screen only.
  evaluate = [line for line in result.stdout.splitlines() if 'trainers.evaluate' in line]
  assert [line.count('cw100') for line in evaluate] == [0, 1, 0, 0, 1, 0]
  assert not runs_root.exists()  # a dry run creates nothing
  bad = run('aadfoo_none_a1_b1_s0')
  assert bad.returncode == 2 and "unknown run 'aadfoo_none_a1_b1_s0'" in bad.stderr


def test_cifar10_study_tables_copy_every_runs_results_beside_the_tables(tmp_path):
  runs = tmp_path / 'aad-tf-runs' / 'cifar10_study'
  for path in ('madry_s1/eval.json', 'madry_s1/robustness.json', 'madry_s1/screen/robustness.json',
               'collapsed_x_s0/screen_step500/robustness.json', 'madry_s1/config.json'):
    (runs / path).parent.mkdir(parents=True, exist_ok=True)
    (runs / path).write_text('{}')
  env = dict(os.environ, AAD_TF_RUNS=str(tmp_path / 'aad-tf-runs'))
  env.pop('RUNS', None)
  result = subprocess.run([os.path.join(ROOT, 'docs/results/cifar10_study.sh'), '--dry_run',
                           'tables'], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 0, result.stderr
  copied = sorted(line.split()[-1].split('/')[-1] for line in result.stdout.splitlines()
                  if line.startswith('cp '))
  assert copied == ['collapsed_x_s0_screen_step500_robustness.json', 'madry_s1_eval.json',
                    'madry_s1_robustness.json', 'madry_s1_screen_robustness.json']
