"""Tests for aad_tf/precision.py (issue 25): where bfloat16 pays, and float32 evaluation copies.

The resolver reads fake /proc/cpuinfo files and fake GPU capabilities; the float32 copy is checked
against the classifier it copies (same weights, no bfloat16 layer, float32 logits close to the
float32 computation, not to the bfloat16 one).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aad_tf import models
from aad_tf import precision

CPUINFO = '''processor\t: 0
vendor_id\t: {vendor}
model name\t: {name}
flags\t\t: fpu sse2 avx avx2 fma {extra}

processor\t: 1
model name\t: {name}
flags\t\t: fpu sse2 avx avx2 fma {extra}
'''


def fake_cpuinfo(tmp_path, name, extra=''):
  path = tmp_path / 'cpuinfo'
  path.write_text(CPUINFO.format(vendor='GenuineIntel', name=name, extra=extra))
  return precision.read_cpuinfo(str(path))


@pytest.mark.parametrize('extra, support', [
    ('avx512f avx512_bf16 amx_bf16 amx_tile amx_int8', 'amx'),
    ('avx512f avx512_bf16', 'avx512_bf16'),
    ('avx512f', 'none'), ('', 'none')])
def test_cpu_bf16_support_from_cpuinfo_flags(tmp_path, extra, support):
  cpu = fake_cpuinfo(tmp_path, 'Intel(R) Xeon(R) Platinum 8480C', extra)
  assert cpu.model_name == 'Intel(R) Xeon(R) Platinum 8480C'
  assert cpu.bf16_support == support
  assert f'bf16: {support}' in precision.describe_cpu(cpu)


def test_missing_cpuinfo_is_unknown_without_bf16(tmp_path):
  cpu = precision.read_cpuinfo(str(tmp_path / 'absent'))
  assert (cpu.model_name, cpu.bf16_support) == ('unknown', 'none')


@pytest.mark.parametrize('extra, gpus, expected', [
    ('amx_bf16 avx512_bf16', (), 'bfloat16'),
    ('avx512_bf16', (), 'bfloat16'),
    ('', (), 'float32'),
    ('', ((8, 0),), 'bfloat16'),            # A100: the GPUs decide, not the CPU
    ('', ((9, 0), (8, 6)), 'bfloat16'),
    ('amx_bf16', ((7, 0),), 'float32'),      # V100 has no bfloat16 arithmetic
    ('', ((8, 0), (7, 5)), 'float32')])
def test_auto_resolves_by_the_hardware_and_logs_it(tmp_path, monkeypatch, extra, gpus, expected):
  logged = []
  monkeypatch.setattr(precision.logging, 'info', lambda msg, *a: logged.append(msg % a))
  cpu = fake_cpuinfo(tmp_path, 'Some CPU', extra)
  assert precision.resolve('auto', cpu=cpu, gpus=gpus) == expected
  assert len(logged) == 1 and logged[0].startswith(f'--mixed_precision=auto: {expected}')


def test_explicit_precisions_and_old_bools_are_not_resolved(tmp_path, monkeypatch):
  def fail():
    raise AssertionError('an explicit precision must not look at the hardware')
  monkeypatch.setattr(precision, 'read_cpuinfo', fail)
  monkeypatch.setattr(precision, 'gpu_capabilities', fail)
  for value, expected in (('float32', 'float32'), ('bfloat16', 'bfloat16'), (True, 'bfloat16'),
                          (False, 'float32'), ('true', 'bfloat16'), ('False', 'float32')):
    assert precision.resolve(value) == expected
  assert precision.keras_policy('bfloat16') == 'mixed_bfloat16'
  assert precision.keras_policy('float32') is None


@pytest.mark.parametrize('bad', ['fp16', 'mixed_float16', '', None, 2])
def test_unknown_precision_is_one_line_value_error(bad):
  with pytest.raises(ValueError, match='mixed_precision must be one of auto, float32, bfloat16'):
    precision.normalize(bad)


@pytest.fixture(scope='module', params=['lenet', 'resnet9'])
def mixed_classifier(request):
  keras.utils.set_random_seed(4)
  shape = (28, 28, 1) if request.param == 'lenet' else (32, 32, 3)
  kwargs = {'width': 4} if request.param == 'resnet9' else {}
  with precision.dtype_policy('mixed_bfloat16'):
    classifier = models.get_model(request.param, input_shape=shape, num_classes=10, **kwargs)
  return classifier


def test_float32_copy_computes_in_float32_with_the_same_weights(mixed_classifier):
  assert precision.reduced_precision_layers(mixed_classifier)  # built in bfloat16
  copy = precision.float32_copy(mixed_classifier)
  assert precision.reduced_precision_layers(copy) == ()
  assert all(layer.compute_dtype == 'float32' for layer in copy.layers)
  assert copy.name == mixed_classifier.name
  assert [l.name for l in copy.layers] == [l.name for l in mixed_classifier.layers]
  for a, b in zip(copy.get_weights(), mixed_classifier.get_weights()):
    np.testing.assert_array_equal(a, b)
  x = np.random.default_rng(0).random((4, *mixed_classifier.input_shape[1:]), dtype=np.float32)
  copied = copy(x, training=False)
  assert copied.dtype == tf.float32
  # The float32 reference: the same architecture built in float32, given the same weights.
  keras.utils.set_random_seed(4)
  reference = models.get_model(mixed_classifier.name, input_shape=x.shape[1:], num_classes=10,
                               **({'width': 4} if mixed_classifier.name == 'resnet9' else {}))
  reference.set_weights(mixed_classifier.get_weights())
  expected = reference(x, training=False).numpy()
  np.testing.assert_allclose(copied.numpy(), expected, rtol=1e-5, atol=1e-6)
  # ... which the bfloat16 classifier is not: the copy is what changed the numbers.
  assert np.abs(mixed_classifier(x, training=False).numpy().astype(np.float32) -
                expected).max() > 1e-4
  # The input gradient of an attack is float32 too.
  xt = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    loss = tf.reduce_sum(copy(xt, training=False))
  assert tape.gradient(loss, xt).dtype == tf.float32


def test_float32_copy_of_a_float32_classifier_is_itself():
  classifier = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
  assert precision.float32_copy(classifier) is classifier
