"""The analysis's report: Tables 1-5 in the paper's layout (Markdown) and as JSON."""

import dataclasses
from typing import Any, Sequence

from aad_tf.analysis.loop import Analysis


def _fmt(entry: dict[str, Any] | None, digits: int = 3) -> str:
  if not entry or entry.get('mean') is None:
    return 'n/a'
  text = f'{entry["mean"]:.{digits}f}'
  if entry.get('stderr') is not None:
    text += f' ± {entry["stderr"]:.{digits}f}'
  return text + f' (n={entry["count"]})'


def _pct(value: float | None) -> str:
  return 'n/a' if value is None else f'{100 * value:.1f}%'


def format_tables(tables: dict[str, Any]) -> str:
  """One model's Tables 1-5 in the paper's layout (mean ± standard error, n)."""
  t1, t2, t3 = tables['table1'], tables['table2'], tables['table3']
  grid = 'native' if t3['grid'] is None else f'{t3["grid"]}x{t3["grid"]}'
  lines = [
      f'**Table 1.** IoU(Att, GT), kappa = {t1["kappa_mode"]}, over I_att ({t1["num_att"]} '
      f'images).', '',
      '| | I_succeed | I_fail |', '|---|---|---|',
      f'| share | {_pct(t1["succeeded"]["share"])} | {_pct(t1["failed"]["share"])} |',
      f'| IoU(Att, GT) | {_fmt(t1["succeeded"]["iou"])} | {_fmt(t1["failed"]["iou"])} |', '',
      'IoU(Att, GT) under each kappa:', '', '| kappa | I_succeed | I_fail |', '|---|---|---|']
  for mode, row in t1['iou_by_kappa'].items():
    lines.append(f'| {mode} | {_fmt(row["succeeded"])} | {_fmt(row["failed"])} |')
  lines += [
      '', f'**Table 2.** Images with IoU(Att, GT) < {t2["iou_below"]} ({t2["count"]} images): '
      f'share and mean confidence in the true class.', '',
      '| | I_succeed | I_fail |', '|---|---|---|',
      f'| share | {_pct(t2["succeeded"]["share"])} | {_pct(t2["failed"]["share"])} |',
      f'| confidence | {_fmt(t2["succeeded"]["confidence"], 4)} | '
      f'{_fmt(t2["failed"]["confidence"], 4)} |', '',
      f'**Table 3.** IoU(Att(x), Att(x_adv)), top #cell cells of the {grid} grid.', '',
      '| #cell | I_succeed | I_fail |', '|---|---|---|']
  for row in t3['rows']:
    lines.append(f'| {row["cells"]} | {_fmt(row["succeeded"])} | {_fmt(row["failed"])} |')
  for key, title in (('table4', 'IoU(LIME mask, GT box), in pixels'),
                     ('table5', 'IoU(LIME mask of x, LIME mask of x_adv), in pixels')):
    table = tables[key]
    number = key[-1]
    if table is None:
      lines += ['', f'**Table {number}.** {title}: not computed (no LIME features).']
      continue
    lines += ['', f'**Table {number}.** {title}; first {table["num_examples"]} images of I_att, '
              f'{table["segmentation"]} superpixels, {table["samples"]} samples.', '',
              '| #features | I_succeed | I_fail |', '|---|---|---|']
    for row in table['rows']:
      lines.append(f'| {row["features"]} | {_fmt(row["succeeded"])} | {_fmt(row["failed"])} |')
  return '\n'.join(lines)


def format_comparison(tables: dict[str, dict[str, Any]]) -> str:
  """The Sec. 5.5 view: one row per model, attention statistics (succeeded / failed)."""
  first = next(iter(tables.values()))
  cells = [row['cells'] for row in first['table3']['rows']]
  header = ['model', 'clean acc', 'StepLL flips', 'IoU(Att,GT) succ / fail'] + [
      f'IoU ori-adv #{k} succ / fail' for k in cells]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  short = lambda e: 'n/a' if not e or e['mean'] is None else f'{e["mean"]:.3f}'
  for name, t in tables.items():
    s, t1 = t['summary'], t['table1']
    row = [name, _pct(s['clean_accuracy']), _pct(s['attack_success_rate']),
           f'{short(t1["succeeded"]["iou"])} / {short(t1["failed"]["iou"])}']
    row += [f'{short(r["succeeded"])} / {short(r["failed"])}' for r in t['table3']['rows']]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def to_markdown(result: Analysis, *, title: str = 'Attention data analysis (paper Sec. 3)',
                figures: Sequence[str] = (), settings: dict[str, Any] | None = None) -> str:
  """The whole report: settings, each model's tables, the comparison, figure links."""
  config = result.config
  lines = [f'# {title}', '']
  for key, value in {**(settings or {}), **dataclasses.asdict(config)}.items():
    lines.append(f'- {key}: {value}')
  lines += ['', 'IoUs are true intersection-over-union: Grad-CAM areas and the box (the cells '
            f'it covers at least {config.min_coverage:.0%}) on the same grid; LIME masks and '
            'the box in pixels. Entries: mean ± standard error (n).', '']
  for name, tables in result.tables.items():
    s = tables['summary']
    lines += [f'## {name}', '',
              f'{s["num_examples"]} images, clean accuracy {_pct(s["clean_accuracy"])}; StepLL '
              f'(eps {config.eps:.4g}) flips {_pct(s["attack_success_rate"])} of I_att '
              f'({s["num_att"]} images). All-zero Grad-CAM maps left out: '
              f'{s["degenerate_maps"]["clean"]} clean, {s["degenerate_maps"]["adversarial"]} '
              'adversarial.', '', format_tables(tables), '']
  if len(result.tables) > 1:
    lines += ['## Across models (Sec. 5.5)', '', format_comparison(result.tables), '']
  if figures:
    lines += ['## Figures', ''] + [f'![{f}]({f})' for f in figures] + ['']
  return '\n'.join(lines)


def to_json(result: Analysis, settings: dict[str, Any] | None = None) -> dict[str, Any]:
  """The report as JSON: settings, the primary model's tables at top level, all under 'models'."""
  primary = result.tables[result.primary]
  return {'settings': {**(settings or {}), **dataclasses.asdict(result.config)},
          'model': result.primary, **primary, 'models': result.tables}
