"""Evaluation: the attack suite by name, the evaluation loop, its tables, masking checks.

Modules, lowest first:
  suite.py        attacks by name (paper grid, A^3, APGD, Square, adaptive, AutoAttack),
                  AttackSettings, Target (what an attack may query), standard_attacks
  loop.py         evaluate: every attack compiled once over a dataset -> Report (worst case,
                  AutoAttack's stages, per-example flags as bit strings: to_bits / from_bits)
  tables.py       format_table / format_stages / format_diagnostics: Markdown tables of a Report
  diagnostics.py  gradient-masking checks (gradient-free vs gradient, eps sweep, loss curve, ...)
  results.py      runs and seeds -> tables in the paper's Table 6 layout beside its numbers

`from aad_tf import evaluation; evaluation.<name>` gives the public names of suite, loop and
tables; diagnostics and results are used as `evaluation.diagnostics`, `evaluation.results`.
The default eps of a dataset is its registry entry's `eval_eps` (aad_tf.data).
"""

from aad_tf.evaluation.suite import PAPER_GRID
from aad_tf.evaluation.suite import A3_ATTACKS
from aad_tf.evaluation.suite import STRONG_ATTACKS
from aad_tf.evaluation.suite import ALL_ATTACKS
from aad_tf.evaluation.suite import WORST_CASE
from aad_tf.evaluation.suite import ModelFn
from aad_tf.evaluation.suite import pgd_step_size
from aad_tf.evaluation.suite import Target
from aad_tf.evaluation.suite import as_target
from aad_tf.evaluation.suite import AttackSettings
from aad_tf.evaluation.suite import RunFn
from aad_tf.evaluation.suite import Attack
from aad_tf.evaluation.suite import make_attack
from aad_tf.evaluation.suite import standard_attacks

from aad_tf.evaluation.loop import attack_seed
from aad_tf.evaluation.loop import compile_attack
from aad_tf.evaluation.loop import Report
from aad_tf.evaluation.loop import evaluate
from aad_tf.evaluation.loop import to_bits
from aad_tf.evaluation.loop import from_bits

from aad_tf.evaluation.tables import format_table
from aad_tf.evaluation.tables import format_diagnostics
from aad_tf.evaluation.tables import format_stages
from aad_tf.evaluation.reports import versions
from aad_tf.evaluation.reports import write_robustness

from aad_tf.evaluation import diagnostics
from aad_tf.evaluation import results
