"""Training precision (float32 or mixed bfloat16), where bfloat16 pays, and float32 evaluation.

Training may compute in bfloat16 with float32 variables (Keras's 'mixed_bfloat16' policy). It
pays where the hardware computes bfloat16 natively: CPUs with AMX (amx_bf16) or AVX512_BF16, and
GPUs of compute capability 8.0 or later. Elsewhere (e.g. AVX2-only CPUs) bfloat16 is emulated and
slower than float32 (docs/results/mixed_precision_throughput.md).

    precision.resolve('auto')          # 'bfloat16' on a bf16-capable machine, else 'float32'
    precision.keras_policy('bfloat16') # 'mixed_bfloat16' (None for float32: keep the global one)
    precision.float32_copy(classifier) # what attacks, exports and evaluations see

Evaluation stays float32 whatever the training precision: a bfloat16 network's input gradient is
rounded and can mask an attack, so `float32_copy` rebuilds a classifier whose layers keep a
mixed policy with float32 layers and the same weights (runs.load_classifier, the closing
evaluation and aad_tf.export all go through it).
"""

import contextlib
import dataclasses
import os
from typing import Iterable, Optional, Sequence, Tuple

import keras
import tensorflow as tf
from absl import logging

PRECISIONS = ('auto', 'float32', 'bfloat16')
CPUINFO = '/proc/cpuinfo'
# The first NVIDIA compute capability with bfloat16 arithmetic (Ampere).
GPU_BF16_CAPABILITY = (8, 0)
# Old config.json files and flag values: the bool `mixed_precision` of earlier versions.
_LEGACY = {True: 'bfloat16', False: 'float32', 'true': 'bfloat16', 'false': 'float32',
           '1': 'bfloat16', '0': 'float32'}


def normalize(value) -> str:
  """'auto', 'float32' or 'bfloat16' from a value of --mixed_precision or config.json.

  Args:
    value: one of PRECISIONS, or a bool (or 'true' / 'false') as earlier versions recorded it:
      True means bfloat16, False float32.

  Raises:
    ValueError: anything else (one line naming the choices).
  """
  key = value.lower() if isinstance(value, str) else value
  if isinstance(key, bool) or key in ('true', 'false', '1', '0'):
    return _LEGACY[key]
  if key in PRECISIONS:
    return key
  raise ValueError(f'mixed_precision must be one of {", ".join(PRECISIONS)} (or true / false), '
                   f'got {value!r}.')


@dataclasses.dataclass(frozen=True)
class CpuInfo:
  """The CPU's model name and feature flags (from /proc/cpuinfo)."""
  model_name: str
  flags: frozenset

  @property
  def bf16_support(self) -> str:
    """'amx' (amx_bf16), 'avx512_bf16', or 'none' (bfloat16 is emulated: slower than float32)."""
    if 'amx_bf16' in self.flags:
      return 'amx'
    if 'avx512_bf16' in self.flags:
      return 'avx512_bf16'
    return 'none'


def read_cpuinfo(path: str = CPUINFO) -> CpuInfo:
  """The first processor's model name and flags in `path`; 'unknown' and no flags without it."""
  name, cpu_flags = 'unknown', frozenset()
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return CpuInfo(name, cpu_flags)
  for line in text.splitlines():
    key, sep, value = line.partition(':')
    key = key.strip()
    if not sep:
      continue
    if key == 'model name' and name == 'unknown':
      name = value.strip()
    elif key == 'flags' and not cpu_flags:
      cpu_flags = frozenset(value.split())
  return CpuInfo(name, cpu_flags)


def gpu_capabilities() -> Tuple[Tuple[int, int], ...]:
  """The compute capability of every visible GPU ((0, 0) where TensorFlow does not say)."""
  found = []
  for device in tf.config.list_physical_devices('GPU'):
    details = tf.config.experimental.get_device_details(device)
    found.append(tuple(details.get('compute_capability') or (0, 0)))
  return tuple(found)


def resolve(requested, *, cpu: Optional[CpuInfo] = None,
            gpus: Optional[Sequence[Tuple[int, int]]] = None) -> str:
  """The precision to train in: 'float32' or 'bfloat16' ('auto' decided by the hardware).

  Args:
    requested: a value `normalize` accepts; only 'auto' looks at the hardware.
    cpu: the CPU (default: `read_cpuinfo()`).
    gpus: the GPUs' compute capabilities (default: `gpu_capabilities()`). With GPUs, training
      runs on them, so they decide: bfloat16 where every one has capability >= 8.0. Without,
      the CPU decides: bfloat16 with AMX or AVX512_BF16.

  Returns:
    'float32' or 'bfloat16'; an 'auto' choice is logged with its reason.
  """
  requested = normalize(requested)
  if requested != 'auto':
    return requested
  gpus = gpu_capabilities() if gpus is None else tuple(gpus)
  if gpus:
    capable = all(tuple(c) >= GPU_BF16_CAPABILITY for c in gpus)
    reason = (f'{len(gpus)} GPU(s) of compute capability '
              f'{", ".join(".".join(map(str, c)) for c in gpus)} (bfloat16 from 8.0)')
  else:
    cpu = cpu or read_cpuinfo()
    capable = cpu.bf16_support != 'none'
    reason = (f'CPU {cpu.model_name} with {cpu.bf16_support.upper()}' if capable else
              f'CPU {cpu.model_name} has neither AMX nor AVX512_BF16 (bfloat16 would be emulated)')
  chosen = 'bfloat16' if capable else 'float32'
  logging.info('--mixed_precision=auto: %s: %s.', chosen, reason)
  return chosen


def keras_policy(precision: str) -> Optional[str]:
  """The Keras dtype policy to build a model under: 'mixed_bfloat16', or None (float32)."""
  return 'mixed_bfloat16' if resolve(precision) == 'bfloat16' else None


@contextlib.contextmanager
def dtype_policy(name: Optional[str]):
  """Sets Keras's global dtype policy to `name` (None: unchanged) while layers are built."""
  previous = keras.config.dtype_policy()
  if name is not None:
    keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def reduced_precision_layers(model: keras.Model) -> Tuple[str, ...]:
  """Names of the layers of `model` (nested models included) that do not compute in float32."""
  names = []
  for layer in _layers(model):
    if layer.dtype_policy.compute_dtype not in ('float32', 'float64'):
      names.append(layer.name)
  return tuple(names)


def _layers(model: keras.Model) -> Iterable[keras.layers.Layer]:
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _layers(layer)


def float32_copy(classifier: keras.Model) -> keras.Model:
  """`classifier` computing in float32: itself if it does, else a copy with the same weights.

  The copy is `keras.models.clone_model` with every layer's dtype policy set to float32 (its
  name, layer names and weight order are the classifier's), so float32 images in give float32
  logits out, and gradients with respect to the images are float32 throughout.

  Args:
    classifier: a functional classifier, possibly built under 'mixed_bfloat16'.

  Returns:
    A classifier with no reduced-precision layer (`reduced_precision_layers` is empty).
  """
  mixed = reduced_precision_layers(classifier)
  if not mixed:
    return classifier

  def clone(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, clone_function=clone)
    config = layer.get_config()
    config['dtype'] = 'float32'
    return layer.__class__.from_config(config)

  with dtype_policy('float32'):
    copy = keras.models.clone_model(classifier, clone_function=clone)
  copy.set_weights(classifier.get_weights())
  logging.info('Using a float32 copy of %s (%d of its layers compute in reduced precision).',
               classifier.name, len(mixed))
  return copy


def describe_cpu(cpu: Optional[CpuInfo] = None) -> str:
  """'<model name> (bf16: amx | avx512_bf16 | none)', for benchmark headers."""
  cpu = cpu or read_cpuinfo()
  return f'{cpu.model_name} (bf16: {cpu.bf16_support}, {os.cpu_count()} logical CPUs)'
