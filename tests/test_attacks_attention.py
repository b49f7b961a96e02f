"""Tests for aad_tf.attacks.attention: A^3's invariants, its base attack at sigma 0, the distance
against NumPy (the adaptive attack is tested with the suite, test_evaluation_suite.py)."""

import numpy as np
import pytest

from aad_tf import attacks
from aad_tf import gradcam

EPS = 0.3


def accuracy(classifier, x, y):
  return float(np.mean(classifier(x, training=False).numpy().argmax(-1) == y))


def run_a3(name, classifier, x, y, eps):
  features = gradcam.FeatureModel(classifier, 'gradcam').fn()
  if name == 'stepll_a3':
    return attacks.a3(features, x, y, base='stepll', eps=eps).numpy()
  return attacks.a3(features, x, y, base='pgd', eps=eps, num_steps=10).numpy()


# Least-likely-class A^3 only has to hurt an undefended MNIST LeNet; PGD's A^3 breaks it.
STRONG = {'pgd_a3': 0.2, 'stepll_a3': 0.8}


@pytest.mark.parametrize('name', sorted(STRONG))
def test_a3_invariants_and_strength(name, trained_lenet):
  classifier, x, y = trained_lenet
  x, y = x[:100], y[:100]
  clean = accuracy(classifier, x, y)
  x_adv = run_a3(name, classifier, x, y, EPS)
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert np.all(np.abs(x_adv - x) <= EPS + 1e-6)
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  assert accuracy(classifier, x_adv, y) < min(STRONG[name], clean - 0.05)
  np.testing.assert_array_equal(run_a3(name, classifier, x[:20], y[:20], 0.0), x[:20])


def test_a3_refuses_an_unknown_base():
  with pytest.raises(ValueError, match='base'):
    attacks.a3(lambda x: (x, x), np.zeros([1, 8, 8, 1], np.float32), [0], base='fgsm', eps=0.1)


@pytest.mark.parametrize('base', ['pgd', 'iter_stepll'])
def test_a3_with_sigma_zero_is_its_base_attack_and_sigma_changes_it(base, trained_lenet):
  classifier, x, y = trained_lenet
  x, y = x[:50], y[:50]
  model_fn = lambda images: classifier(images, training=False)
  features = gradcam.FeatureModel(classifier, 'gradcam').fn()
  run = lambda sigma: attacks.a3(features, x, y, base=base, eps=EPS, step_size=EPS / 4,
                                 num_steps=5, sigma=sigma, normalize='max').numpy()
  if base == 'pgd':
    plain = attacks.pgd(model_fn, x, y, eps=EPS, step_size=EPS / 4, num_steps=5,
                        random_init=False).numpy()
  else:
    plain = attacks.iter_stepll(model_fn, x, y, eps=EPS, step_size=EPS / 4, num_steps=5).numpy()
  np.testing.assert_allclose(run(0.0), plain, atol=1e-6)
  assert np.mean(np.abs(run(10.0) - plain) > 1e-3) > 0.01
  if base == 'pgd':  # the scaling reaches the attention term
    raw = attacks.a3(features, x, y, base=base, eps=EPS, step_size=EPS / 4, num_steps=5,
                     sigma=10.0, normalize='none').numpy()
    assert np.mean(np.abs(run(10.0) - raw) > 1e-3) > 0.01


def test_attention_distance_matches_numpy(trained_lenet):
  classifier, x, y = trained_lenet
  x, y = x[:20], y[:20]
  features = gradcam.FeatureModel(classifier, 'gradcam').fn()
  x_adv = np.clip(x + 0.2 * np.sign(np.random.default_rng(0).normal(size=x.shape)), 0, 1)
  x_adv = x_adv.astype(np.float32)
  for normalize in ('none', 'max'):
    distance = attacks.attention_distance(features, x, y, normalize=normalize)(x_adv).numpy()
    clean = gradcam.gradcam(features, x, y)[0].numpy()
    adv = gradcam.gradcam(features, x_adv, y)[0].numpy()
    if normalize == 'max':
      clean = clean / (clean.max(axis=(1, 2), keepdims=True) + 1e-12)
      adv = adv / (adv.max(axis=(1, 2), keepdims=True) + 1e-12)
    contrast = clean.max(axis=(1, 2), keepdims=True) > clean.min(axis=(1, 2), keepdims=True)
    area = ((clean >= clean.mean(axis=(1, 2), keepdims=True)) & contrast).astype(np.float32)
    np.testing.assert_allclose(distance, np.abs(area - adv).sum(axis=(1, 2)), rtol=1e-5,
                               atol=1e-5)
