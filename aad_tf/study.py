"""The AAD screens: one table of (scaling, alpha, beta) runs beside their Madry baseline.

    rows = study.load_screen(runs.runs_root('aad_study'))                # MNIST (issue 12)
    rows = study.load_screen(runs.runs_root('cifar10_study'), study.CIFAR10)  # CIFAR-10 (issue 24)
    print(study.screen_table(rows, study.CIFAR10))

A screen run is a `trainers.main` directory whose `screen/robustness.json` holds the screen's
attacks and whose `eval.json` holds the aad/* diagnostics of `summaries.TrainSummaries` (mean over
the run's logs, and the last log). Where the baseline and the runs lie is the study's `Layout`:
MNIST (docs/results/aad_study.sh) compares `screen_*` runs (1 epoch) with a Madry run's
`screen_step600/robustness.json` (its step-600 checkpoint, the same budget); CIFAR-10
(docs/results/cifar10_study.sh) compares the seed-0 runs `aad_*_s0` with `madry_s0`, all at the
recipe's full budget.
"""

import dataclasses
import glob
import json
import os
from typing import Dict, List, Optional, Sequence

SCREEN_ATTACKS = ('clean', 'pgd100', 'apgd_ce', 'square', 'worst_case')


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a screen's runs lie and what it shows.

  Attributes:
    baseline: glob (relative to the runs directory) of the baseline's evaluation directories.
    runs: glob of the screened runs' directories.
    attacks: the table's accuracy columns.
    eps: the eps as written in the table's title.
  """
  baseline: str
  runs: str
  attacks: Sequence[str]
  eps: str


MNIST = Layout(baseline='*/screen_step600', runs='screen_*', attacks=SCREEN_ATTACKS, eps='0.3')
CIFAR10 = Layout(baseline='madry_s0/screen', runs='aad*_s0',
                 attacks=('clean', 'pgd100', 'apgd_ce', 'worst_case'), eps='8/255')
LAYOUTS = {'mnist': MNIST, 'cifar10': CIFAR10}
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
    attention_mode: how its attention passes ran (`DefenseConfig.attention_mode`; '-' for the
      baseline). Rows published before the field existed were 'inference'.
  """
  name: str
  scaling: str
  alpha: float
  beta: float
  accuracy: Dict[str, float]
  num_examples: int
  diagnostics_mean: Dict[str, float]
  diagnostics_last: Dict[str, float]
  attention_mode: str = 'inference'


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
      diagnostics_last={k: v for k, v in history[-1].items() if k != 'step'},
      attention_mode=defense.get('attention_mode', 'inference') if aad else '-')


def load_screen(runs_dir: str, layout: Layout = MNIST) -> List[ScreenRow]:
  """The baseline rows then every screened run of `runs_dir` (by name) that has its evaluation."""
  baselines = sorted(glob.glob(os.path.join(runs_dir, layout.baseline)))
  rows = [load_row(os.path.dirname(d), os.path.basename(d)) for d in baselines]
  rows += [load_row(d) for d in sorted(glob.glob(os.path.join(runs_dir, layout.runs)))]
  return [r for r in rows if r is not None]


def load_published(path: str) -> List[ScreenRow]:
  """The rows of a published screen.json (`screen_json`'s output), e.g. from an earlier session."""
  with open(path) as f:
    return load_published_rows(json.load(f))


def load_published_rows(rows: Sequence[dict]) -> List[ScreenRow]:
  """`screen_json`'s rows back as ScreenRows."""
  return [ScreenRow(**row) for row in rows]


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


def screen_table(rows: Sequence[ScreenRow], layout: Layout = MNIST) -> str:
  """Markdown: accuracy (%), worst-case difference to the baseline, and the diagnostics."""
  baseline = next((r for r in rows if r.scaling == '-'), None)
  head = ['run', 'scaling', 'alpha', 'beta', *layout.attacks, 'worst - Madry',
          'ratio rect (mean / last)', 'ratio pres (mean / last)', 'area (last)',
          'empty maps (last)']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    worst = r.accuracy.get('worst_case')
    delta = ('-' if baseline is None or r is baseline or worst is None else
             f'{100 * (worst - baseline.accuracy["worst_case"]):+.1f}')
    m, last = r.diagnostics_mean, r.diagnostics_last
    ratio = lambda k: ('-' if k not in m else f'{m[k]:.3f} / {last.get(k, float("nan")):.3f}')
    # Attention passes on batch statistics are marked; the default (moving statistics) is not.
    scaling = r.scaling + {'training': ', training-mode BN',
                           'batch': ', batch-statistics BN'}.get(r.attention_mode, '')
    cells = [r.name, scaling, f'{r.alpha:g}', f'{r.beta:g}',
             *[_pct(r.accuracy.get(a)) for a in layout.attacks], delta,
             ratio('grad_ratio_rect'), ratio('grad_ratio_pres'),
             '-' if 'area_fraction' not in last else f'{last["area_fraction"]:.2f}',
             '-' if 'empty_area_fraction' not in last else f'{last["empty_area_fraction"]:.2f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def screen_json(rows: Sequence[ScreenRow]) -> List[dict]:
  return [dataclasses.asdict(r) for r in rows]
