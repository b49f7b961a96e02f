"""aad_tf.study: the screen table reads run directories and compares each row with Madry."""

import json
import os

import pytest

from aad_tf import study


def write(path, payload):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(payload, f)


def fake_run(root, name, *, aad, worst, scaling='max', alpha=0.1, beta=0.1, subdir='screen',
             attention_mode='inference'):
  run = os.path.join(root, name)
  write(os.path.join(run, 'config.json'),
        {'defense': {'aad': aad, 'alpha': alpha, 'beta': beta, 'gradcam_normalize': scaling,
                     'attention_mode': attention_mode}})
  accuracy = {'clean': 0.97, 'pgd100': worst + 0.02, 'apgd_ce': worst + 0.01,
              'square': worst + 0.03, 'worst_case': worst}
  write(os.path.join(run, subdir, 'robustness.json'), {'accuracy': accuracy, 'num_examples': 10})
  history = [{'step': 100, 'grad_ratio_rect': 0.2, 'grad_ratio_pres': 0.4, 'area_fraction': 0.3,
              'empty_area_fraction': 0.0},
             {'step': 200, 'grad_ratio_rect': 0.1, 'grad_ratio_pres': 0.2, 'area_fraction': 0.25,
              'empty_area_fraction': 0.5}]
  write(os.path.join(run, 'eval.json'), {'aad_diagnostics': {
      'history': history, 'mean': {'grad_ratio_rect': 0.15, 'grad_ratio_pres': 0.3}} if aad
      else None})
  return run


def test_screen_rows_and_differences_to_madry(tmp_path):
  root = str(tmp_path)
  fake_run(root, 'confirm_madry_s0', aad=False, worst=0.80, subdir='screen_step600')
  fake_run(root, 'screen_max_a0.1_b0.1', aad=True, worst=0.83)
  fake_run(root, 'screen_none_a1_b1', aad=True, worst=0.78, scaling='none', alpha=1, beta=1)
  os.makedirs(os.path.join(root, 'screen_unfinished'))  # no evaluation yet: left out
  rows = study.load_screen(root)
  assert [r.name for r in rows] == ['confirm_madry_s0', 'screen_max_a0.1_b0.1',
                                    'screen_none_a1_b1']
  assert rows[0].scaling == '-' and rows[0].alpha == 0.0
  assert rows[1].diagnostics_last['empty_area_fraction'] == 0.5
  table = study.screen_table(rows)
  lines = table.splitlines()
  assert '| screen_max_a0.1_b0.1 | max | 0.1 | 0.1 | 97.0 | 85.0 | 84.0 | 86.0 | 83.0 | +3.0 |' \
      in lines[3]
  assert '| -2.0 |' in lines[4] and '0.150 / 0.100' in lines[3] and '0.300 / 0.200' in lines[3]
  assert study.screen_json(rows)[2]['scaling'] == 'none'


def test_published_rows_fill_in_missing_runs_and_found_runs_win(tmp_path):
  root = str(tmp_path / 'runs')
  fake_run(root, 'screen_max_a0.1_b0.1', aad=True, worst=0.83)
  published = [dict(study.screen_json(study.load_screen(root))[0], name=name, accuracy=acc)
               for name, acc in [('screen_max_a0.1_b0.1', {'worst_case': 0.5}),
                                 ('screen_old', {'worst_case': 0.7})]]
  published.append(dict(published[1], name='confirm_madry_s0', scaling='-', alpha=0.0, beta=0.0,
                        accuracy={'worst_case': 0.8}))
  path = tmp_path / 'screen.json'
  path.write_text(json.dumps(published))
  rows = study.merge_published(study.load_screen(root), study.load_published(str(path)))
  assert [r.name for r in rows] == ['confirm_madry_s0', 'screen_max_a0.1_b0.1', 'screen_old']
  assert rows[1].accuracy['worst_case'] == 0.83  # the run found, not its published row
  assert '| +3.0 |' in study.screen_table(rows).splitlines()[3]  # against the published Madry


def test_runs_root_follows_the_environment(monkeypatch, tmp_path):
  from aad_tf import runs
  monkeypatch.setenv('AAD_TF_RUNS', str(tmp_path))
  assert runs.runs_root('aad_study') == os.path.join(str(tmp_path), 'aad_study')
  monkeypatch.delenv('AAD_TF_RUNS')
  assert runs.runs_root() == os.path.expanduser('~/aad-tf-runs')


def test_cifar10_layout_compares_seed_zero_runs_with_madry_s0(tmp_path):
  root = str(tmp_path)
  fake_run(root, 'madry_s0', aad=False, worst=0.30)
  fake_run(root, 'madry_s1', aad=False, worst=0.90)  # a confirm seed: not the screen's baseline
  fake_run(root, 'aad_none_a0.01_b0.01_s0', aad=True, worst=0.32, scaling='none', alpha=0.01,
           beta=0.01)
  fake_run(root, 'aad_none_a0.01_b0.01_s1', aad=True, worst=0.95)  # confirm seed: left out
  rows = study.load_screen(root, study.CIFAR10)
  assert [r.name for r in rows] == ['madry_s0', 'aad_none_a0.01_b0.01_s0']
  lines = study.screen_table(rows, study.CIFAR10).splitlines()
  assert 'square' not in lines[0] and '| +2.0 |' in lines[3]
  assert study.load_screen(root) == []  # the MNIST layout finds none of these


def test_cifar10_screen_marks_runs_whose_attention_passes_use_batch_statistics(tmp_path):
  root = str(tmp_path)
  fake_run(root, 'madry_s0', aad=False, worst=0.30)
  fake_run(root, 'aad_rms_softmax_a0.1_b0.1_s0', aad=True, worst=0.10, scaling='rms_softmax')
  fake_run(root, 'aadtrain_rms_softmax_a0.1_b0.1_s0', aad=True, worst=0.31,
           scaling='rms_softmax', attention_mode='training')
  rows = study.load_screen(root, study.CIFAR10)
  assert [r.attention_mode for r in rows] == ['-', 'inference', 'training']
  lines = study.screen_table(rows, study.CIFAR10).splitlines()
  assert '| rms_softmax |' in lines[3] and 'training-mode BN' not in lines[3]
  assert '| rms_softmax, training-mode BN |' in lines[4] and '| +1.0 |' in lines[4]
  # A table published before the field existed loads, as 'inference'.
  published = study.screen_json(rows)
  del published[1]['attention_mode']
  assert study.load_published_rows(published)[1].attention_mode == 'inference'


def test_aad_study_binary_draws_the_sensitivity_of_one_scaling(tmp_path, monkeypatch):
  from absl import flags
  from absl.testing import flagsaver
  from trainers import aad_study
  root = str(tmp_path / 'runs')
  fake_run(root, 'confirm_madry_s0', aad=False, worst=0.80, subdir='screen_step600')
  fake_run(root, 'screen_rms_softmax_a0_b10', aad=True, worst=0.81, scaling='rms_softmax',
           alpha=0, beta=10)
  fake_run(root, 'screen_none_a0_b10', aad=True, worst=0.50, scaling='none', alpha=0, beta=10)
  fake_run(root, 'screen_rms_softmax_a0_b1', aad=True, worst=0.70, scaling='rms_softmax',
           alpha=0, beta=1, attention_mode='training')
  points = aad_study.sensitivity_points(study.load_screen(root), 'rms_softmax')
  # The baseline is the sweep's alpha = beta = 0; the other scaling's row, and a row whose
  # attention passes ran in another mode, are not in the sweep.
  assert [(p.name, p.alpha, p.beta, p.accuracy['worst_case']) for p in points] == [
      ('confirm_madry_s0', 0.0, 0.0, 0.80), ('screen_rms_softmax_a0_b10', 0.0, 10.0, 0.81)]
  if 'sensitivity_scaling' not in flags.FLAGS:
    aad_study.define_flags()
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # defaults, as a command line without flags would give
  out = tmp_path / 'out'
  for scaling, drawn in (('rms_softmax', True), ('', False)):
    with flagsaver.flagsaver(runs=root, output_dir=str(out), sensitivity_scaling=scaling):
      (out / 'sensitivity.png').unlink(missing_ok=True)
      aad_study.main(['aad_study'])
    assert (out / 'sensitivity.png').exists() == drawn
  assert (out / 'screen.md').exists()
