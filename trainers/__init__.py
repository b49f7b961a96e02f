"""absl binaries: flags -> config -> aad_tf library calls.

Importing the package (every `python -m trainers.<binary>` does, before the binary imports
TensorFlow) hides TensorFlow's C++ start-up logging (oneDNN, CUDA registration and cuInit on a
machine without a GPU, cpu_feature_guard): TF_CPP_MIN_LOG_LEVEL defaults to 2, and at 2 or more
the lines TensorFlow writes while it is imported and lists its devices, which that setting does
not reach, go to /dev/null. Set TF_CPP_MIN_LOG_LEVEL=0 to see all of it; errors raised by
TensorFlow are Python exceptions and are never hidden.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_to_devnull():
  """Points file descriptor 2 at /dev/null (C++ logging bypasses sys.stderr)."""
  sys.stderr.flush()
  saved = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


def _import_tensorflow_quietly() -> None:
  level = os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if 'tensorflow' in sys.modules or not level.isdigit() or int(level) < 2:
    return
  with _stderr_to_devnull():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()  # cuInit's failure on a machine without a GPU


_import_tensorflow_quietly()
