"""Atomic file writes: a reader sees the old file or the new one, never a partial one."""

import json
from typing import Any

import tensorflow as tf


def write_text(path: str, text: str) -> None:
  """Writes a text file atomically (temporary file, then rename); any tf.io.gfile path."""
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def write_json(path: str, payload: Any) -> None:
  """Writes `payload` as indented, key-sorted JSON atomically (non-JSON values as str)."""
  write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
