"""Result tables across runs and seeds, next to the paper's Table 6.

    rows = [results.Row('madry', [results.load_run('runs/mnist_madry_cpu_s0'),
                                  results.load_run('runs/mnist_madry_cpu_s1')])]
    print(results.format_report(rows, dataset='mnist'))

A run is a `trainers.main` model directory: its `eval.json` (the closing evaluation written at the
end of training) and, when `trainers.evaluate` was run on it, its `robustness.json` (the suite).
Seeds of one row are summarised by their mean and the values of each seed, so the spread is
visible rather than hidden in an average.
"""

import dataclasses
import json
import os
from typing import Mapping, Sequence

import numpy as np

# Table 6 of the paper (accuracy, %), MNIST and CIFAR-10 blocks; columns are the paper grid.
PAPER_COLUMNS = ('clean', 'fgsm', 'pgd10', 'pgd20', 'pgd40', 'pgd100', 'cw10', 'cw20', 'cw40',
                 'cw100')
PAPER_TABLE6 = {
    'mnist': {
        'raw': (99.18, 7.72, 0.49, 0.54, 0.64, 0.53, 0.0, 0.0, 0.0, 0.0),
        'madry': (99.00, 96.92, 95.69, 95.52, 94.14, 92.49, 95.69, 92.69, 87.67, 85.17),
        'madry_aad': (99.20, 97.12, 98.02, 96.81, 94.77, 93.02, 97.28, 95.04, 91.31, 89.77),
        'alp': (98.61, 97.59, 98.23, 97.52, 96.04, 94.68, 96.96, 95.48, 93.18, 92.39),
        'alp_aad': (98.52, 97.60, 98.24, 97.56, 96.11, 94.82, 97.18, 95.62, 93.54, 92.72),
    },
    'cifar10': {
        'raw': (90.51, 14.24, 5.93, 5.80, 5.97, 6.04, 0.0, 0.0, 0.0, 0.0),
        'madry': (83.36, 63.28, 49.29, 45.25, 44.85, 44.72, 37.21, 36.27, 35.92, 35.79),
        'madry_aad': (83.62, 64.98, 50.13, 48.99, 48.55, 48.49, 40.83, 39.90, 39.75, 39.64),
        'alp': (82.80, 64.96, 52.79, 49.04, 48.81, 48.60, 41.35, 40.43, 40.11, 40.00),
        'alp_aad': (80.50, 65.97, 53.43, 52.34, 52.14, 51.99, 43.32, 42.60, 42.43, 42.34),
    },
}
ROW_LABELS = {'raw': 'RAW', 'madry': 'Madry adv', 'madry_aad': 'Madry adv + AAD',
              'alp': 'Kannan ALP', 'alp_aad': 'Kannan ALP + AAD'}
A3_COLUMNS = ('stepll', 'stepll_a3', 'iter_stepll', 'iter_stepll_a3', 'pgd10', 'pgd_a3')
STRONG_COLUMNS = ('apgd_ce', 'apgd_dlr', 'apgd_t', 'square', 'adaptive', 'worst_case')
# Every column the paired table may show, in this order (those both rows of a pair have).
PAIRED_COLUMNS = ('clean', 'fgsm', 'pgd10', 'pgd20', 'pgd40', 'pgd100', 'cw100', 'apgd_ce',
                  'apgd_dlr', 'apgd_t', 'square', 'adaptive', 'pgd_a3', 'worst_case')
CLOSING_COLUMNS = ('clean', 'fgsm', 'pgd20', 'worst_case')


@dataclasses.dataclass(frozen=True)
class RunResult:
  """What one run directory holds.

  Attributes:
    model_dir: the run directory.
    seed: the training seed.
    dataset: dataset name.
    closing: the closing evaluation (`eval.json`), or None.
    suite: the robustness suite (`robustness.json`), or None.
    grid: the suite's attacks that were also run on the following test examples
      (`trainers.evaluate --eval_offset`), merged with the suite into one report on the union of
      the examples; None when there are no such pieces.
  """
  model_dir: str
  seed: int | None
  dataset: str | None
  closing: Mapping | None
  suite: Mapping | None
  grid: Mapping | None = None

  def _report(self, source: str) -> Mapping | None:
    if source not in ('closing', 'suite', 'grid'):
      raise ValueError(f"source must be 'closing', 'suite' or 'grid', got {source!r}.")
    if source == 'grid':
      return self.grid if self.grid is not None else self.suite
    return self.closing if source == 'closing' else self.suite

  def accuracy(self, source: str) -> dict[str, float]:
    """attack -> accuracy in percent from 'closing', 'suite' or 'grid' ({} if missing).

    'grid' is the suite merged with its extra pieces (the suite alone without them)."""
    report = self._report(source)
    return {k: 100.0 * float(v) for k, v in (report or {}).get('accuracy', {}).items()}

  def num_examples(self, source: str) -> int | None:
    report = self._report(source)
    return None if report is None else report.get('num_examples')


def merge_pieces(pieces: Sequence[Mapping]) -> dict[str, object]:
  """One report from reports on consecutive, disjoint example ranges.

  Each piece is a `robustness.json` dict with 'first_example' (default 0), 'num_examples' and
  'accuracy'; only the attacks present in every piece are kept, weighted by example counts
  (worst_case is dropped: it is only defined over the attacks of one piece).

  Raises:
    ValueError: if the pieces do not tile [0, total) in order.
  """
  expected = 0
  for piece in pieces:
    first = int(piece.get('first_example', 0))
    if first != expected:
      raise ValueError(f'Evaluation pieces must cover consecutive examples: expected one '
                       f'starting at {expected}, got {first}.')
    expected = first + int(piece['num_examples'])
  names = [n for n in pieces[0]['accuracy'] if n != 'worst_case'
           and all(n in p['accuracy'] for p in pieces)]
  accuracy = {n: sum(p['accuracy'][n] * p['num_examples'] for p in pieces) / expected
              for n in names}
  return {'num_examples': expected, 'accuracy': accuracy}


@dataclasses.dataclass(frozen=True)
class Row:
  """One table row: a defence (`key`, e.g. 'madry_aad') and its runs, one per seed."""
  key: str
  runs: Sequence[RunResult]

  @property
  def label(self) -> str:
    return ROW_LABELS.get(self.key, self.key)


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from e


def load_run(model_dir: str, suite_subdir: str = '', grid_subdirs: Sequence[str] = ()
             ) -> RunResult:
  """Reads `eval.json`, `<suite_subdir>/robustness.json` and the grid pieces of a run directory.

  Args:
    model_dir: a trainers.main run directory.
    suite_subdir: where the suite's robustness.json is, relative to `model_dir`.
    grid_subdirs: directories (relative to `model_dir`) of robustness.json files on the test
      examples after the suite's (`trainers.evaluate --eval_offset`); missing ones are skipped.

  Raises:
    ValueError: if the directory does not exist or holds neither file, or the pieces do not
      follow the suite.
  """
  if not os.path.isdir(model_dir):
    raise ValueError(f'Run directory {model_dir} does not exist.')
  closing = _read_json(os.path.join(model_dir, 'eval.json'))
  suite = _read_json(os.path.join(model_dir, suite_subdir, 'robustness.json'))
  if closing is None and suite is None:
    raise ValueError(f'{model_dir} has neither eval.json nor robustness.json: train it with '
                     f'trainers.main and evaluate it with trainers.evaluate first.')
  config = _read_json(os.path.join(model_dir, 'config.json')) or {}
  first = closing or suite
  seed = config.get('seed', first.get('seed'))
  pieces = [p for p in (_read_json(os.path.join(model_dir, sub, 'robustness.json'))
                        for sub in grid_subdirs) if p is not None]
  grid = None
  if suite is not None and pieces:
    try:
      grid = merge_pieces([suite, *sorted(pieces, key=lambda p: p.get('first_example', 0))])
    except ValueError as e:
      raise ValueError(f'{model_dir}: {e}') from e
  return RunResult(model_dir, seed, config.get('dataset', first.get('dataset')), closing, suite,
                   grid)


def parse_row(spec: str, suite_subdir: str = '', grid_subdirs: Sequence[str] = ()) -> Row:
  """'key=dir1,dir2' -> Row (one directory per seed)."""
  key, sep, dirs = spec.partition('=')
  dirs = [d for d in dirs.split(',') if d]
  if not sep or not key or not dirs:
    raise ValueError(f"Row {spec!r} must look like 'madry_aad=runs/a_s0,runs/a_s1'.")
  return Row(key, [load_run(d, suite_subdir, grid_subdirs) for d in dirs])


def summarise(values: Sequence[float]) -> str:
  """'88.00' for one seed; 'mean (seed values)' for several, e.g. '88.10 (87.70, 88.50)'."""
  if not values:
    return '-'
  if len(values) == 1:
    return f'{values[0]:.2f}'
  return f'{np.mean(values):.2f} ({", ".join(f"{v:.2f}" for v in values)})'


def row_values(row: Row, columns: Sequence[str], source: str) -> list[list[float]]:
  """Per column, the accuracy (%) of every seed that has it."""
  per_seed = [run.accuracy(source) for run in row.runs]
  return [[acc[c] for acc in per_seed if c in acc] for c in columns]


def _header(columns: Sequence[str]) -> list[str]:
  return ['| | ' + ' | '.join(columns) + ' |', '|---|' + '---|' * len(columns)]


def grid_table(rows: Sequence[Row], dataset: str | None, source: str = 'suite',
               columns: Sequence[str] = PAPER_COLUMNS, with_paper: bool = True) -> str:
  """Markdown: each of our rows, followed by the paper's row of the same defence when known."""
  paper = PAPER_TABLE6.get(dataset or '', {}) if with_paper else {}
  lines = _header(columns)
  for row in rows:
    seeds = len(row.runs)
    name = f'{row.label} (ours, {seeds} seed{"s" if seeds > 1 else ""})'
    lines.append(f'| {name} | ' + ' | '.join(summarise(v) for v in
                                              row_values(row, columns, source)) + ' |')
    if row.key in paper:
      published = dict(zip(PAPER_COLUMNS, paper[row.key]))
      lines.append(f'| {row.label} (paper) | ' + ' | '.join(
          f'{published[c]:.2f}' if c in published else '-' for c in columns) + ' |')
  return '\n'.join(lines)


def runs_table(rows: Sequence[Row]) -> str:
  """Markdown: per run its seed, trained steps, wall times and whether masking was flagged."""
  lines = ['| run | seed | steps | train wall (s) | suite examples | suite wall (s) '
           '| masking diagnostics fired |', '|---|---|---|---|---|---|---|']
  for row in rows:
    for run in row.runs:
      train = (run.closing or {}).get('train', {})
      suite = run.suite or {}
      diagnostics = suite.get('diagnostics') or []
      fired = [d['name'] for d in diagnostics if d.get('fired')]
      wall = train.get('wall_time_s')
      suite_wall = suite.get('wall_time_s')
      # An empty list is a suite run with --nodiagnostics: nothing was checked, nothing passed.
      verdict = ('-' if not suite else 'not run' if not diagnostics else
                 (', '.join(fired) or 'none'))
      lines.append(
          f'| {os.path.basename(os.path.normpath(run.model_dir))} | {run.seed} | '
          f'{train.get("final_step", "-")} | {"-" if wall is None else f"{wall:.0f}"} | '
          f'{suite.get("num_examples", "-")} | '
          f'{"-" if suite_wall is None else f"{suite_wall:.0f}"} | {verdict} |')
  return '\n'.join(lines)


def _counts(rows: Sequence[Row], source: str) -> str:
  """The example counts of `source` across runs, e.g. '1000' or '1000/2000'."""
  counts = sorted({r.num_examples(source) for row in rows for r in row.runs} - {None})
  return '/'.join(str(c) for c in counts)


def difference_table(rows: Sequence[Row], source: str = 'suite',
                     columns: Sequence[str] = ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw100',
                                               'apgd_ce', 'apgd_dlr', 'square', 'worst_case')
                     ) -> str:
  """Markdown: for each row `<base>_aad` whose `<base>` row is present, mean(AAD) - mean(base).

  Columns missing from either side are dropped; '' when no pair is present.
  """
  by_key = {row.key: row for row in rows}
  pairs = [(by_key[k[:-len('_aad')]], row) for k, row in by_key.items()
           if k.endswith('_aad') and k[:-len('_aad')] in by_key]
  if not pairs:
    return ''
  lines = None
  for base, aad in pairs:
    base_values = dict(zip(columns, row_values(base, columns, source)))
    aad_values = dict(zip(columns, row_values(aad, columns, source)))
    present = [c for c in columns if base_values[c] and aad_values[c]]
    if lines is None:
      shown = present
      lines = _header(shown)
    lines.append(f'| {aad.label} vs {base.label} | ' + ' | '.join(
        f'{np.mean(aad_values[c]) - np.mean(base_values[c]):+.2f}'
        if base_values[c] and aad_values[c] else '-' for c in shown) + ' |')
  return '\n'.join(lines)


def paired_table(base: Row, aad: Row, source: str = 'suite',
                 columns: Sequence[str] = PAIRED_COLUMNS) -> str:
  """Markdown: per metric, AAD - base for each seed pair, their mean and standard deviation.

  The i-th run of `aad` pairs with the i-th run of `base` (the same seed: the same initial
  weights and data order), so the seed-to-seed spread common to both cancels. '' unless both
  rows have the same number (>= 2) of runs.
  """
  if len(base.runs) != len(aad.runs) or len(base.runs) < 2:
    return ''
  pairs = list(zip(base.runs, aad.runs))
  lines = ['| metric | ' + ' | '.join(f'{os.path.basename(a.model_dir.rstrip("/"))} - '
                                      f'{os.path.basename(b.model_dir.rstrip("/"))}'
                                      for b, a in pairs) + ' | paired mean | sd |',
           '|---|' + '---|' * (len(pairs) + 2)]
  for c in columns:
    if not all(c in b.accuracy(source) and c in a.accuracy(source) for b, a in pairs):
      continue
    d = np.array([a.accuracy(source)[c] - b.accuracy(source)[c] for b, a in pairs])
    lines.append(f'| {c} | ' + ' | '.join(f'{v:+.1f}' for v in d) +
                 f' | {d.mean():+.2f} | {d.std(ddof=1):.2f} |')
  return '\n'.join(lines) if len(lines) > 2 else ''


def format_report(rows: Sequence[Row], dataset: str | None = None) -> str:
  """Every table: the paper grid, A^3, strong attacks + worst case, closing eval, runs."""
  if not rows:
    raise ValueError('No rows to report.')
  dataset = dataset or next((r.dataset for row in rows for r in row.runs if r.dataset), None)
  n_suite = _counts(rows, 'suite')
  n_grid = _counts(rows, 'grid')
  n_closing = _counts(rows, 'closing')
  blocks = []
  if n_suite:
    blocks += [f'Paper grid (Table 6 layout), `trainers.evaluate`, first {n_grid} test images; '
               f'several seeds: mean (per-seed values).',
               grid_table(rows, dataset, 'grid'),
               f'The suite below ran on the first {n_suite} test images.',
               'A^3 next to the plain attacks (Table 7 layout):',
               grid_table(rows, dataset, 'suite', A3_COLUMNS, with_paper=False),
               'Strong, adaptive and gradient-free attacks; worst case = correct under every '
               'attack of the suite:',
               grid_table(rows, dataset, 'suite', STRONG_COLUMNS, with_paper=False)]
    differences = difference_table(rows, 'suite')
    if differences:
      blocks += ['AAD minus the adversarial training it sits on (points; mean over seeds; '
                 'binomial standard error of one accuracy near 90% on 1000 images: about 1 point):',
                 differences]
    by_key = {row.key: row for row in rows}
    for key, row in by_key.items():
      paired = (paired_table(by_key[key[:-len('_aad')]], row)
                if key.endswith('_aad') and key[:-len('_aad')] in by_key else '')
      if paired:
        blocks += [f'{row.label} minus {by_key[key[:-len("_aad")]].label}, paired by seed '
                   f'(points; sd over the pairs):', paired]
  if n_closing:
    blocks += [f'Closing evaluation of `trainers.main`, first {n_closing} test images:',
               grid_table(rows, dataset, 'closing', CLOSING_COLUMNS, with_paper=False)]
  blocks += ['Runs:', runs_table(rows)]
  return '\n\n'.join(blocks) + '\n'


def collect_json(rows: Sequence[Row]) -> dict[str, object]:
  """Everything `format_report` shows, as JSON (per row and seed, accuracies in percent)."""
  out = {}
  for row in rows:
    out[row.key] = [{'model_dir': run.model_dir, 'seed': run.seed,
                     'closing': run.accuracy('closing'), 'suite': run.accuracy('suite'),
                     'closing_examples': run.num_examples('closing'),
                     'suite_examples': run.num_examples('suite'),
                     'grid': run.accuracy('grid'), 'grid_examples': run.num_examples('grid'),
                     'train': (run.closing or {}).get('train'),
                     'suite_wall_time_s': (run.suite or {}).get('wall_time_s')}
                    for run in row.runs]
  return out
