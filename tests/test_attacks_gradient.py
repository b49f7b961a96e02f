"""Tests for aad_tf.attacks.gradient: inside the eps ball and [0, 1], eps = 0 is the identity, they
break an undefended model; plus compile-once and input checks."""

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import attacks

EPS = 0.3


def accuracy(classifier, x, y):
  return float(np.mean(classifier(x, training=False).numpy().argmax(-1) == y))


def run_attack(name, classifier, x, y, eps):
  model_fn = lambda images: classifier(images, training=False)
  table = {
      'fgsm': lambda: attacks.fgsm(model_fn, x, y, eps=eps),
      'stepll': lambda: attacks.stepll(model_fn, x, y, eps=eps),
      'iter_stepll': lambda: attacks.iter_stepll(model_fn, x, y, eps=eps, step_size=eps / 5,
                                                 num_steps=10),
      'pgd': lambda: attacks.pgd(model_fn, x, y, eps=eps, step_size=eps / 4, num_steps=10),
      'pgd_restarts': lambda: attacks.pgd(model_fn, x, y, eps=eps, step_size=eps / 4,
                                          num_steps=5, num_restarts=3),
      'cw': lambda: attacks.cw_linf(model_fn, x, y, eps=eps, step_size=eps / 4, num_steps=10),
  }
  return table[name]().numpy()


ATTACKS = ['fgsm', 'stepll', 'iter_stepll', 'pgd', 'pgd_restarts', 'cw']
# Attacks that must push an undefended MNIST LeNet below 20% at eps 0.3 (single-step
# least-likely-class attacks are weaker by design and only have to hurt it).
STRONG = {'fgsm': 0.5, 'pgd': 0.2, 'pgd_restarts': 0.2, 'cw': 0.2, 'iter_stepll': 0.5,
          'stepll': 0.8}


@pytest.mark.parametrize('name', ATTACKS)
def test_attack_invariants_and_strength(name, trained_lenet):
  classifier, x, y = trained_lenet
  x, y = x[:100], y[:100]
  clean = accuracy(classifier, x, y)
  assert clean > 0.85
  x_adv = run_attack(name, classifier, x, y, EPS)
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert np.all(np.abs(x_adv - x) <= EPS + 1e-6)
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  assert accuracy(classifier, x_adv, y) < min(STRONG[name], clean - 0.05)


@pytest.mark.parametrize('name', ATTACKS)
def test_eps_zero_is_identity(name, trained_lenet):
  classifier, x, y = trained_lenet
  x_adv = run_attack(name, classifier, x[:20], y[:20], 0.0)
  np.testing.assert_array_equal(x_adv, x[:20])


def test_pgd_stronger_with_more_steps_and_restarts_keep_successes(trained_lenet):
  classifier, x, y = trained_lenet
  model_fn = lambda images: classifier(images, training=False)
  weak = attacks.pgd(model_fn, x, y, eps=0.15, step_size=0.15 / 4, num_steps=2)
  strong = attacks.pgd(model_fn, x, y, eps=0.15, step_size=0.15 / 4, num_steps=20,
                       num_restarts=2)
  assert accuracy(classifier, strong, y) <= accuracy(classifier, weak, y)


def test_seeded_pgd_is_reproducible(trained_lenet):
  classifier, x, y = trained_lenet
  model_fn = lambda images: classifier(images, training=False)
  run = lambda: attacks.pgd(model_fn, x[:10], y[:10], eps=0.1, step_size=0.02, num_steps=3,
                            seed=tf.constant([7, 1])).numpy()
  np.testing.assert_array_equal(run(), run())


def test_compiled_attack_traces_once_for_any_step_count_and_batch(trained_lenet):
  classifier, x, y = trained_lenet
  model_fn = lambda images: classifier(images, training=False)
  traces = []

  @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1]), tf.TensorSpec([None], tf.int32),
                                tf.TensorSpec([], tf.int32)])
  def compiled(images, labels, steps):
    traces.append(1)
    return attacks.pgd(model_fn, images, labels, eps=0.3, step_size=0.05, num_steps=steps)

  for n, steps in ((5, 1), (7, 20)):
    assert compiled(x[:n], y[:n], tf.constant(steps)).shape[0] == n
  assert len(traces) == 1


@pytest.mark.parametrize('kwargs, match', [
    (dict(eps=1.5, step_size=0.1, num_steps=1), 'eps'),
    (dict(eps=-0.1, step_size=0.1, num_steps=1), 'eps'),
    (dict(eps=0.1, step_size=-1.0, num_steps=1), 'step_size'),
    (dict(eps=0.1, step_size=0.1, num_steps=2.5), 'num_steps'),
    (dict(eps=0.1, step_size=0.1, num_steps=1, loss='l2'), 'loss'),
    (dict(eps=0.1, step_size=0.1, num_steps=1, num_restarts=0), 'num_restarts'),
])
def test_bad_arguments_fail_early(kwargs, match):
  with pytest.raises(ValueError, match=match):
    attacks.pgd(lambda x: tf.zeros([1, 10]), tf.zeros([1, 28, 28, 1]), tf.zeros([1], tf.int32),
                **kwargs)
