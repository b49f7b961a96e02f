"""The AAD screen (issue 12): one table of (scaling, alpha, beta) runs beside their Madry baseline.

    rows = study.load_screen('runs/aad_study')
    print(study.screen_table(rows))

A screen run is a `trainers.main` directory whose `screen/robustness.json` holds the screen's
attacks (clean, PGD-100, APGD-CE, Square, worst case) and whose `eval.json` holds the aad/*
diagnostics of `summaries.TrainSummaries` (mean over the run's logs, and the last log). The
baseline is a Madry run's `screen_step600/robustness.json` (its step-600 checkpoint, the same
budget as a one-epoch screen run).
"""

import dataclasses
import glob
import json
import os
from typing import Dict, List, Optional, Sequence

SCREEN_ATTACKS = ('clean', 'pgd100', 'apgd_ce', 'square', 'worst_case')
DIAGNOSTICS = ('grad_ratio_rect', 'grad_ratio_pres', 'cos_rect', 'cos_pres', 'map_max',
               'area_fraction', 'empty_area_fraction')


@dataclasses.dataclass(frozen=True)
class ScreenRow:
  """One screened configuration.

  Attributes:
    name: the run directory's name.
    scaling, alpha, beta: its AAD settings ('-' and 0 for the Madry baseline).
    accuracy: attack -> accuracy (fraction) on the screen's test images.
    num_examples: how many test images.
    diagnostics_mean, diagnostics_last: aad/* values, mean over the run's logs and the last log
      (empty for the baseline).
  """
  name: str
  scaling: str
  alpha: float
  beta: float
  accuracy: Dict[str, float]
  num_examples: int
  diagnostics_mean: Dict[str, float]
  diagnostics_last: Dict[str, float]


def _read(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def load_row(run_dir: str, screen_subdir: str = 'screen') -> Optional[ScreenRow]:
  """The row of one run directory, or None if its screen evaluation is missing."""
  suite = _read(os.path.join(run_dir, screen_subdir, 'robustness.json'))
  config = _read(os.path.join(run_dir, 'config.json'))
  if suite is None or config is None:
    return None
  defense = config.get('defense', {})
  aad = bool(defense.get('aad'))
  closing = _read(os.path.join(run_dir, 'eval.json')) or {}
  diagnostics = closing.get('aad_diagnostics') or {}
  history = diagnostics.get('history') or [{}]
  return ScreenRow(
      name=os.path.basename(run_dir.rstrip('/')),
      scaling=defense.get('gradcam_normalize', 'none') if aad else '-',
      alpha=float(defense.get('alpha', 0.0)) if aad else 0.0,
      beta=float(defense.get('beta', 0.0)) if aad else 0.0,
      accuracy={k: float(v) for k, v in suite.get('accuracy', {}).items()},
      num_examples=int(suite.get('num_examples', 0)),
      diagnostics_mean=dict(diagnostics.get('mean') or {}),
      diagnostics_last={k: v for k, v in history[-1].items() if k != 'step'})


def load_screen(runs_dir: str) -> List[ScreenRow]:
  """The baseline rows (`*/screen_step600`) then every `screen_*` run of `runs_dir`, by name."""
  rows = [load_row(d, 'screen_step600') for d in sorted(glob.glob(os.path.join(runs_dir, '*')))]
  rows += [load_row(d) for d in sorted(glob.glob(os.path.join(runs_dir, 'screen_*')))]
  return [r for r in rows if r is not None]


def load_published(path: str) -> List[ScreenRow]:
  """The rows of a published screen.json (`screen_json`'s output), e.g. from an earlier session."""
  with open(path) as f:
    return [ScreenRow(**row) for row in json.load(f)]


def merge_published(rows: Sequence[ScreenRow], published: Sequence[ScreenRow]) -> List[ScreenRow]:
  """`rows` plus every published row whose run is not among them (a run found wins), baseline first.

  A new session's `$AAD_TF_RUNS` may lack the runs an earlier session published (its machine was
  replaced): their evaluated rows are kept from the published table instead of being retrained.
  """
  names = {r.name for r in rows}
  merged = list(rows) + [r for r in published if r.name not in names]
  return sorted(merged, key=lambda r: (r.scaling != '-', r.name))


def _pct(value: Optional[float]) -> str:
  return '-' if value is None else f'{100 * value:.1f}'


def screen_table(rows: Sequence[ScreenRow]) -> str:
  """Markdown: accuracy (%), worst-case difference to the baseline, and the diagnostics."""
  baseline = next((r for r in rows if r.scaling == '-'), None)
  head = ['run', 'scaling', 'alpha', 'beta', *SCREEN_ATTACKS, 'worst - Madry',
          'ratio rect (mean / last)', 'ratio pres (mean / last)', 'area (last)',
          'empty maps (last)']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    worst = r.accuracy.get('worst_case')
    delta = ('-' if baseline is None or r is baseline or worst is None else
             f'{100 * (worst - baseline.accuracy["worst_case"]):+.1f}')
    m, last = r.diagnostics_mean, r.diagnostics_last
    ratio = lambda k: ('-' if k not in m else f'{m[k]:.3f} / {last.get(k, float("nan")):.3f}')
    cells = [r.name, r.scaling, f'{r.alpha:g}', f'{r.beta:g}',
             *[_pct(r.accuracy.get(a)) for a in SCREEN_ATTACKS], delta,
             ratio('grad_ratio_rect'), ratio('grad_ratio_pres'),
             '-' if 'area_fraction' not in last else f'{last["area_fraction"]:.2f}',
             '-' if 'empty_area_fraction' not in last else f'{last["empty_area_fraction"]:.2f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def screen_json(rows: Sequence[ScreenRow]) -> List[dict]:
  return [dataclasses.asdict(r) for r in rows]
