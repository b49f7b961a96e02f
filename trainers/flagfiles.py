"""Flagfiles by name, and the entry point every binary (and console script) starts through.

absl opens `--flagfile=PATH`, nested ones included, relative to the working directory. The
binaries also accept a flagfile by its name alone, as the design card writes them:

    aad-train --flagfile=imagenet_alp_aad.cfg         # from any directory
    python -m trainers.main --flagfile=imagenet_alp_aad.cfg

A `--flagfile` whose path does not exist (relative to the working directory, absl's rule, which
still wins) is looked up in the packaged flags directory, `flags_dir()`, with or without its
leading `flags/`; so the nested `--flagfile=flags/imagenet_base.cfg` of a packaged flagfile
resolves there too. The packaged directory is the checkout's `flags/` (a checkout or an editable
install), or `trainers/flags/` of an installed wheel (setup.py ships `flags/*.cfg` there).

`expand` replaces every flagfile directive by the flags its file holds, as absl does (blank lines
and lines starting with `#` or `//` skipped, nested files expanded in place, a file already being
read ignored), and hands absl plain flags.
"""

import os
import sys
from typing import Callable, List, Optional, Sequence

from absl import app
from absl import flags

from trainers import cli

FLAGS = flags.FLAGS

_DIRECTIVES = ('--flagfile', '-flagfile')
_PREFIX = 'flags' + os.sep


def flags_dir() -> str:
  """The packaged flags directory: `trainers/flags` when installed, else the checkout's `flags/`."""
  here = os.path.dirname(os.path.abspath(__file__))
  for candidate in (os.path.join(here, 'flags'), os.path.join(os.path.dirname(here), 'flags')):
    if os.path.isdir(candidate):
      return candidate
  raise FileNotFoundError(f'No packaged flags directory beside {here}.')


def resolve(name: str) -> Optional[str]:
  """The file `--flagfile=name` means: the path itself if it exists, else the packaged one."""
  path = os.path.expanduser(name)
  if os.path.isfile(path):
    return path
  if os.path.isabs(path):
    return None
  try:
    base = flags_dir()
  except FileNotFoundError:
    return None
  relative = os.path.normpath(path)
  candidates = [relative] + ([relative[len(_PREFIX):]] if relative.startswith(_PREFIX) else [])
  for candidate in candidates:
    packaged = os.path.join(base, candidate)
    if os.path.isfile(packaged):
      return packaged
  return None


def expand(argv: Sequence[str]) -> List[str]:
  """`argv` (program name first) with every flagfile directive replaced by the flags it holds.

  Raises:
    flags.CantOpenFlagFileError: a flagfile found neither as a path nor among the packaged ones.
    flags.IllegalFlagValueError: a bare `--flagfile` at the end of argv.
  """
  out, rest = list(argv[:1]), list(argv[1:])
  while rest:
    arg = rest.pop(0)
    if arg in _DIRECTIVES:
      if not rest:
        raise flags.IllegalFlagValueError('--flagfile with no argument')
      out.extend(_file_flags(rest.pop(0), []))
    elif _is_directive(arg):
      out.extend(_file_flags(_filename(arg), []))
    else:
      out.append(arg)
      if arg == '--':  # Flags end here, as for absl.
        out.extend(rest)
        break
  return out


def _is_directive(text: str) -> bool:
  return any(text.startswith(d + '=') for d in _DIRECTIVES)


def _filename(directive: str) -> str:
  return directive.split('=', 1)[1].strip()


def _file_flags(name: str, reading: List[str]) -> List[str]:
  if not name:
    return []  # absl ignores an empty name
  path = resolve(name)
  if path is None:
    raise flags.CantOpenFlagFileError(
        f'Unable to open flagfile {name!r}: neither {os.path.abspath(name)} nor a packaged '
        f'flagfile of {_flags_dir_or_none()} (give a path, or the name of one of those files).')
  key = os.path.realpath(path)
  if key in reading:
    sys.stderr.write(f'Warning: Hit circular flagfile dependency. Ignoring flagfile: {name}\n')
    return []
  reading.append(key)
  try:
    with open(path) as f:
      lines = f.readlines()
  except OSError as e:
    raise flags.CantOpenFlagFileError(f'Unable to open flagfile {path}: {e}') from e
  out = []
  for line in lines:
    if line.isspace() or line.startswith('#') or line.startswith('//'):
      continue
    if _is_directive(line):
      out.extend(_file_flags(_filename(line), reading))
    else:
      out.append(line.strip())
  reading.pop()
  return out


def _flags_dir_or_none() -> Optional[str]:
  try:
    return flags_dir()
  except FileNotFoundError:
    return None


def parse_flags(argv: Sequence[str]) -> List[str]:
  """`cli.parse_flags` after `expand`: a bad flag or flagfile is one line and exit status 2."""
  try:
    argv = expand(argv)
  except flags.Error as e:
    cli.fail(e, cli.USAGE)
  return cli.parse_flags(argv)


def run(main: Callable, define_flags: Callable[[], None]) -> None:
  """Defines a binary's flags and runs it, with flagfiles by name.

  The same for `python -m trainers.X` and the console script: when the binary's module is not
  `__main__` (a console script imports it), its key flags are also made those of the program, so
  that `--helpshort` lists them as it does for `python -m`.
  """
  define_flags()
  module = main.__module__
  if module != '__main__':
    for flag in FLAGS.get_key_flags_for_module(module):
      FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    doc = sys.modules[module].__doc__
    main_module = sys.modules.get('__main__')
    if doc and main_module is not None and not getattr(main_module, '__doc__', None):
      main_module.__doc__ = doc  # absl's usage text is the main module's docstring
  app.run(cli.guarded(main), flags_parser=parse_flags)
