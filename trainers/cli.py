"""How every binary runs: one line per expected failure, exit statuses, tracebacks on request.

  cli.run(main)   # instead of absl.app.run(main)

An expected failure prints one line on stderr, `<binary>: error: <message>`, and exits with
status 2 for usage errors (bad or missing flags, unexpected arguments, a run directory that
refuses the configuration) or 1 for runtime errors (missing or corrupt data and checkpoints,
unwritable directories, a NaN loss). Nothing else is printed: no `--help` and no traceback.
`AAD_TF_TRACEBACK=1` in the environment, or absl's `--verbosity=1`, prints the traceback before
the line. Any other exception is a bug and keeps Python's traceback.
"""

import os
import sys
import traceback
from typing import Callable, List, NoReturn

import tensorflow as tf
from absl import app
from absl import flags

from aad_tf import checkpointing
from aad_tf import training

FLAGS = flags.FLAGS
USAGE, RUNTIME = 2, 1
TRACEBACK_ENV = 'AAD_TF_TRACEBACK'
USAGE_ERRORS = (app.UsageError, flags.Error, training.ConfigChangeError)
RUNTIME_ERRORS = (checkpointing.CheckpointError, checkpointing.NonFiniteLossError, OSError,
                  ValueError, tf.errors.OpError)


def program_name() -> str:
  """'trainers.main' under `python -m trainers.main`, else the script's file name."""
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  return spec.name if spec is not None and spec.name else os.path.basename(sys.argv[0])


def traceback_wanted() -> bool:
  if os.environ.get(TRACEBACK_ENV, '').lower() in ('1', 'true', 'yes'):
    return True
  try:
    return FLAGS.is_parsed() and FLAGS.verbosity >= 1
  except (AttributeError, flags.Error):
    return False


def one_line(error: BaseException) -> str:
  """The error's message on one line (a multi-line message is joined with ' | ')."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  return ' | '.join(lines) or type(error).__name__


def fail(error: BaseException, status: int) -> NoReturn:
  """Prints `<binary>: error: <message>` (after the traceback if wanted) and exits."""
  if traceback_wanted():
    traceback.print_exc()
  sys.stderr.write(f'{program_name()}: error: {one_line(error)}\n')
  sys.stderr.flush()
  sys.exit(status)


def parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing with a bad flag as one line and status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(e, USAGE)


def guarded(main: Callable[[List[str]], None]) -> Callable[[List[str]], None]:
  """`main` with expected failures turned into one line and an exit status."""
  def run_main(argv):
    try:
      return main(argv)
    except USAGE_ERRORS as e:
      fail(e, USAGE)
    except RUNTIME_ERRORS as e:
      fail(e, RUNTIME)
  return run_main


def run(main: Callable[[List[str]], None]) -> None:
  """absl.app.run(main) with the failure handling of this module."""
  app.run(guarded(main), flags_parser=parse_flags)
