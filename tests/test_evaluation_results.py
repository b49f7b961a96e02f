"""Tests for aad_tf.evaluation.results and the trainers.collect_results binary."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from aad_tf.evaluation import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(path, seed, suite=None, closing=None, train=None, fired=(), diagnostics=True):
  path.mkdir(parents=True)
  (path / 'config.json').write_text(json.dumps({'seed': seed, 'dataset': 'mnist'}))
  if closing is not None:
    (path / 'eval.json').write_text(json.dumps({
        'num_examples': 2000, 'accuracy': closing, 'seed': seed,
        **({'train': train} if train else {})}))
  if suite is not None:
    (path / 'robustness.json').write_text(json.dumps({
        'num_examples': 1000, 'accuracy': suite, 'wall_time_s': 12.0, 'seed': seed,
        'diagnostics': [{'name': n, 'fired': True} for n in fired] +
                       ([{'name': 'eps_sweep_not_zero', 'fired': False}] if diagnostics else [])}))
  return str(path)


def test_seeds_are_averaged_and_listed_beside_the_paper(tmp_path):
  a = make_run(tmp_path / 'm0', 0, suite={'clean': 0.97, 'pgd20': 0.88, 'worst_case': 0.80},
               closing={'clean': 0.975}, train={'final_step': 1200, 'wall_time_s': 660.0})
  b = make_run(tmp_path / 'm1', 1, suite={'clean': 0.95, 'pgd20': 0.86, 'worst_case': 0.78},
               closing={'clean': 0.965})
  row = results.parse_row(f'madry={a},{b}')
  assert [r.seed for r in row.runs] == [0, 1]
  values = results.row_values(row, ['clean', 'pgd20', 'cw100'], 'suite')
  np.testing.assert_allclose(values[0], [97.0, 95.0])
  assert values[2] == []
  table = results.grid_table([row], 'mnist')
  assert '| Madry adv (ours, 2 seeds) | 96.00 (97.00, 95.00) | -' in table
  assert '| Madry adv (paper) | 99.00 | 96.92 |' in table
  report = results.format_report([row])
  assert 'first 1000 test images' in report and 'first 2000 test images' in report
  assert '| m0 | 0 | 1200 | 660 | 1000 | 12 | none |' in report
  assert '| m1 | 1 | - | - | 1000 | 12 | none |' in report


def test_aad_minus_base_and_fired_diagnostics(tmp_path):
  base = make_run(tmp_path / 'b', 0, suite={'clean': 0.90, 'pgd20': 0.70, 'worst_case': 0.60})
  aad = make_run(tmp_path / 'a', 0, suite={'clean': 0.91, 'pgd20': 0.65, 'worst_case': 0.62},
                 fired=['square_vs_pgd'])
  rows = [results.parse_row(f'alp={base}'), results.parse_row(f'alp_aad={aad}')]
  table = results.difference_table(rows)
  assert '| clean | pgd20 | worst_case |' in table
  assert '| Kannan ALP + AAD vs Kannan ALP | +1.00 | -5.00 | +2.00 |' in table
  assert results.difference_table(rows[:1]) == ''
  assert 'square_vs_pgd' in results.runs_table(rows)


def test_a_suite_without_diagnostics_says_so(tmp_path):
  run = make_run(tmp_path / 'c', 0, suite={'clean': 0.35}, diagnostics=False)
  table = results.runs_table([results.parse_row(f'madry={run}')])
  assert '| c | 0 | - | - | 1000 | 12 | not run |' in table


def test_grid_pieces_extend_the_paper_grid(tmp_path):
  run = make_run(tmp_path / 'r', 0, suite={'clean': 0.9, 'pgd20': 0.8, 'square': 0.7,
                                           'worst_case': 0.6})
  piece = tmp_path / 'r' / 'grid_1000_2000'
  piece.mkdir()
  (piece / 'robustness.json').write_text(json.dumps({
      'first_example': 1000, 'num_examples': 1000,
      'accuracy': {'clean': 0.8, 'pgd20': 0.6, 'worst_case': 0.5}}))
  loaded = results.load_run(run, grid_subdirs=['grid_1000_2000', 'not_run_yet'])
  assert loaded.num_examples('grid') == 2000 and loaded.num_examples('suite') == 1000
  assert loaded.accuracy('grid') == pytest.approx({'clean': 85.0, 'pgd20': 70.0})
  assert loaded.accuracy('suite')['square'] == pytest.approx(70.0)
  report = results.format_report([results.Row('madry', [loaded])])
  assert 'first 2000 test images' in report and '| Madry adv (ours, 1 seed) | 85.00 |' in report
  (piece / 'robustness.json').write_text(json.dumps({
      'first_example': 500, 'num_examples': 1000, 'accuracy': {'clean': 0.8}}))
  with pytest.raises(ValueError, match='consecutive examples: expected one starting at 1000'):
    results.load_run(run, grid_subdirs=['grid_1000_2000'])


@pytest.mark.parametrize('spec', ['madry', 'madry=', '=runs/x'])
def test_bad_row_specs_are_rejected(spec):
  with pytest.raises(ValueError, match='must look like'):
    results.parse_row(spec)


def test_missing_or_empty_or_corrupt_run_dirs_are_rejected(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    results.load_run(str(tmp_path / 'nope'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='neither eval.json nor robustness.json'):
    results.load_run(str(tmp_path / 'empty'))
  (tmp_path / 'bad').mkdir()
  (tmp_path / 'bad' / 'eval.json').write_text('{"accuracy": ')
  with pytest.raises(ValueError, match='not valid JSON'):
    results.load_run(str(tmp_path / 'bad'))


def test_binary_writes_tables_json_and_copies(tmp_path):
  run = make_run(tmp_path / 'r', 3, suite={'clean': 0.5}, closing={'clean': 0.6})
  out = tmp_path / 'out'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
  done = subprocess.run([sys.executable, '-m', 'trainers.collect_results', f'--row=raw={run}',
                         f'--output_dir={out}'], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert '| RAW (ours, 1 seed) | 50.00 |' in (out / 'tables.md').read_text()
  assert json.loads((out / 'results.json').read_text())['raw'][0]['suite'] == {'clean': 50.0}
  assert sorted(os.listdir(out)) == ['raw_s3_eval.json', 'raw_s3_robustness.json',
                                     'results.json', 'tables.md']
  bad = subprocess.run([sys.executable, '-m', 'trainers.collect_results', '--row=madry'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and 'must look like' in bad.stderr


def test_paired_table_pairs_runs_by_seed(tmp_path):
  base = [make_run(tmp_path / f'madry_s{k}', k, suite={'clean': c, 'worst_case': w})
          for k, (c, w) in enumerate([(0.60, 0.30), (0.70, 0.40), (0.65, 0.35)])]
  aad = [make_run(tmp_path / f'aad_s{k}', k, suite={'clean': c, 'worst_case': w})
         for k, (c, w) in enumerate([(0.61, 0.31), (0.70, 0.42), (0.64, 0.36)])]
  rows = [results.parse_row('madry=' + ','.join(map(str, base))),
          results.parse_row('madry_aad=' + ','.join(map(str, aad)))]
  table = results.paired_table(*rows)
  # Differences +1, +2, +1 points: mean +1.33, sd 0.58 (pairing removes the seeds' own spread,
  # which is 5 points here).
  assert '| worst_case | +1.0 | +2.0 | +1.0 | +1.33 | 0.58 |' in table
  assert '| clean | +1.0 | +0.0 | -1.0 | +0.00 | 1.00 |' in table
  assert 'aad_s0 - madry_s0' in table.splitlines()[0]
  assert 'paired by seed' in results.format_report(rows)
  assert results.paired_table(rows[0], results.parse_row(f'madry_aad={aad[0]}')) == ''
