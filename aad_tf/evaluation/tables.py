"""Markdown tables of a `Report`: the paper grid, the A^3 pairs, the rest; masking checks."""

import re
from typing import Any, Mapping, Sequence

from aad_tf.evaluation.loop import Report
from aad_tf.evaluation.suite import A3_ATTACKS
from aad_tf.evaluation.suite import WORST_CASE


def _section(name: str) -> int:
  """0: the paper grid (clean, fgsm, pgd<k>, cw<k>), 1: the A^3 pairs, 2: everything else."""
  if name in ('clean', 'fgsm') or re.fullmatch(r'(pgd|cw)\d+', name):
    return 0
  if name in A3_ATTACKS or re.fullmatch(r'iter_stepll\d+', name):
    return 1
  return 2


def _grid_key(name: str):
  """Paper order: clean, fgsm, then PGD and CW by increasing steps."""
  match = re.fullmatch(r'(pgd|cw)(\d+)', name)
  if match:
    return (2 if match.group(1) == 'pgd' else 3, int(match.group(2)))
  return (0 if name == 'clean' else 1, 0)


_SECTION_TITLES = ('Paper grid (Table 6 layout)', 'A^3 next to the plain attacks (Table 7 layout)',
                   'Strong, adaptive and gradient-free attacks')


def _table(columns: Sequence[str], row_name: str, values: Mapping[str, float]) -> str:
  return '\n'.join(['| | ' + ' | '.join(columns) + ' |', '|---|' + '---|' * len(columns),
                    f'| {row_name} | ' + ' | '.join(f'{100 * values[n]:.2f}' for n in columns)
                    + ' |'])


def format_table(report: Report, row_name: str = 'model') -> str:
  """Markdown tables, accuracies in percent, columns named by the attack names.

  The attacks are grouped as in the paper: the grid (Table 6: clean, fgsm, pgd<k>, cw<k>), the
  A^3 pairs (Table 7; `pgd_a3` sits next to the plain PGD with the same steps when that was run)
  and the strong attacks; `worst_case` ends the last table. One group gives one table, without a
  title. The accuracy after each stage of attacks run in stages (AutoAttack), skipped attacks
  and the gradient-masking diagnostics follow.
  """
  sections = [[], [], []]
  for name in report.accuracy:
    sections[_section(name)].append(name)
  sections[0].sort(key=_grid_key)
  a3_order = {n: i for i, n in enumerate(A3_ATTACKS)}
  sections[1].sort(key=lambda n: a3_order.get(n, len(a3_order)))
  a3_steps = report.params.get('pgd_a3', {}).get('num_steps')
  if a3_steps and 'pgd_a3' in sections[1] and f'pgd{a3_steps}' in report.accuracy:
    sections[1].insert(sections[1].index('pgd_a3'), f'pgd{a3_steps}')
  groups = [(title, names) for title, names in zip(_SECTION_TITLES, sections) if names]
  if not groups:
    groups = [(_SECTION_TITLES[0], [])]
  values = {**report.accuracy, WORST_CASE: report.worst_case}
  blocks = []
  for index, (title, names) in enumerate(groups):
    columns = names + ([WORST_CASE] if index == len(groups) - 1 else [])
    table = _table(columns, row_name, values)
    blocks.append(f'{title}\n\n{table}' if len(groups) > 1 else table)
  if report.stages:
    blocks.append(format_stages(report, row_name))
  if report.skipped:
    blocks.append('Skipped: ' + '; '.join(f'{n} ({why})' for n, why in report.skipped.items()))
  if report.diagnostics:
    blocks.append(format_diagnostics(report.diagnostics))
  return '\n\n'.join(blocks)


def format_stages(report: Report, row_name: str = 'model') -> str:
  """Per attack run in stages (AutoAttack), a Markdown table of the accuracy (%) after each."""
  blocks = []
  for name, accuracy in report.stage_accuracy.items():
    blocks.append(f'{name}: accuracy after each stage\n\n'
                  + _table(list(accuracy), row_name, accuracy))
  return '\n\n'.join(blocks)


def format_diagnostics(diagnostics: Sequence[Mapping[str, Any]]) -> str:
  """A Markdown table of the gradient-masking checks."""
  rows = []
  for d in diagnostics:
    verdict = '**FIRED**' if d['fired'] else ('not run' if d.get('value') is None else 'ok')
    value = '-' if d.get('value') is None else f"{d['value']:.4g}"
    rows.append(f"| {d['name']} | {verdict} | {value} | {d['threshold']:.4g} | "
                f"{d['message']} |")
  return '\n'.join(['Gradient-masking diagnostics', '',
                    '| check | verdict | value | threshold | meaning |',
                    '|---|---|---|---|---|', *rows])
