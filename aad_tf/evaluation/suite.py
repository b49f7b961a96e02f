"""The attack suite: attacks by name, with the settings they share, and what they may query.

    attacks = standard_attacks(['clean', 'fgsm', 'pgd20'], eps=0.3)   # evaluate them: loop.py

Attacks by name (lower-case paper headers; `ALL_ATTACKS` is the full suite):
  clean                     no attack.
  fgsm                      one step of size eps (Goodfellow et al. 2015).
  pgd<k>, cw<k>             k-step PGD on cross-entropy / on the CW margin, step 2.5 * eps / k
                            (Madry et al.'s rule: enough to cross the ball and come back), one
                            random start; the paper's grid uses k = 10, 20, 40, 100.
  pgd<k>_r<n>, cw<k>_r<n>   the same with n random restarts (per example, any success counts).
  stepll                    one least-likely-class step of size eps (paper Eq. 4).
  iter_stepll               `a3_num_steps` least-likely steps of eps / k (Kurakin et al. 2017).
  stepll_a3, iter_stepll_a3, pgd_a3
                            A^3 (paper Eq. 11-13): the base objective plus sigma times the L1
                            distance between the clean attention area and the adversarial map;
                            pgd_a3 uses pgd<a3_num_steps>'s steps, so it pairs with it.
  apgd_ce, apgd_dlr         Auto-PGD (Croce & Hein 2020), `apgd_num_steps` iterations.
  apgd_t                    targeted APGD-DLR over `apgd_target_classes` classes, each on the
                            examples still robust (AutoAttack's APGD-T).
  fab_t                     targeted FAB (Croce & Hein 2020), 100 iterations towards each of
                            `apgd_target_classes` classes (AutoAttack's FAB-T; optional).
  autoattack                AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square with
                            5000 queries, each on the examples still robust;
                            `aad_tf.attacks.autoattack`), its fixed budgets whatever the settings;
                            optional; the report keeps the accuracy after each stage.
  square                    gradient-free Square Attack (Andriushchenko et al. 2020),
                            `square_queries` iterations after its start (1 + square_queries
                            queries per example at most, as the reference counts them).
  adaptive                  misclassify while keeping Grad-CAM close to the clean map
                            (`attacks.adaptive_attention`), PGD steps of 2.5 * eps / k.
The A^3 attacks and `adaptive` need the Grad-CAM features of the model (a Keras classifier and its
Grad-CAM layer); against logits alone (a SavedModel) they are skipped and the report says so.
"""

import dataclasses
import re
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from aad_tf.attacks import apgd as apgd_lib
from aad_tf import attacks as attacks_lib
from aad_tf.attacks import autoattack as autoattack_lib
from aad_tf.attacks import fab as fab_lib
from aad_tf import gradcam as gradcam_lib
from aad_tf.attacks import square as square_lib

PAPER_GRID = ('clean', 'fgsm', 'pgd10', 'pgd20', 'pgd40', 'pgd100', 'cw10', 'cw20', 'cw40',
              'cw100')
A3_ATTACKS = ('stepll', 'stepll_a3', 'iter_stepll', 'iter_stepll_a3', 'pgd_a3')
STRONG_ATTACKS = ('apgd_ce', 'apgd_dlr', 'apgd_t', 'square', 'adaptive')
ALL_ATTACKS = PAPER_GRID + A3_ATTACKS + STRONG_ATTACKS
WORST_CASE = 'worst_case'

_ITERATIVE = re.compile(r'(pgd|cw|iter_stepll)(\d+)(?:_r(\d+))?')

ModelFn = attacks_lib.ModelFn


def pgd_step_size(eps: float, num_steps: int) -> float:
  """Madry et al.'s step size for k-step PGD: 2.5 * eps / k."""
  return 2.5 * eps / max(int(num_steps), 1)


# ---------------------------------------------------------------------------------------------
# What an attack may query.

@dataclasses.dataclass(frozen=True)
class Target:
  """The model under attack.

  Attributes:
    model_fn: images [B, H, W, C] in [0, 1] -> logits [B, K], inference mode, differentiable.
    feature_fn: images -> (Grad-CAM features [B, h, w, F], logits), or None when the model's
      internals are not available (a SavedModel): then attention-based attacks are skipped.
    name: for logs.
    owner: an object the functions need alive (the loaded SavedModel holding the variables).
    keras_model: the Keras model that model_fn runs, when there is one: Square reads its layers
      to recompute only what its window changes (`aad_tf.attacks.windowed`).
  """
  model_fn: ModelFn
  feature_fn: gradcam_lib.FeatureFn | None = None
  name: str = 'model'
  owner: Any = None
  keras_model: keras.Model | None = None

  @classmethod
  def from_keras(cls, classifier: keras.Model, gradcam_layer: str | None = None
                 ) -> 'Target':
    """A Keras classifier (logits output); Grad-CAM features if `gradcam_layer` is given."""
    feature_fn = None
    if gradcam_layer is not None:
      feature_fn = gradcam_lib.FeatureModel(classifier, gradcam_layer).fn(training=False)
    return cls(lambda images: classifier(images, training=False), feature_fn, classifier.name,
               keras_model=classifier)

  @classmethod
  def from_saved_model(cls, path: str, signature: str = 'serving_default',
                       output: str = 'logits') -> 'Target':
    """An exported SavedModel (see `aad_tf.export`): logits only, differentiable.

    The signature function is called inside the attacks' GradientTapes; TensorFlow
    differentiates loaded functions, so gradient attacks work on the SavedModel alone.
    """
    loaded = tf.saved_model.load(path)
    if signature not in loaded.signatures:
      raise ValueError(f'{path} has no signature {signature!r}; it has '
                       f'{sorted(loaded.signatures)}.')
    fn = loaded.signatures[signature]
    inputs = fn.structured_input_signature[1]
    if len(inputs) != 1:
      raise ValueError(f'Signature {signature!r} of {path} must take one input, got '
                       f'{sorted(inputs)}.')
    (input_name,) = inputs
    if output not in fn.structured_outputs:
      raise ValueError(f'Signature {signature!r} of {path} has no output {output!r}; it has '
                       f'{sorted(fn.structured_outputs)}.')
    return cls(lambda images: fn(**{input_name: images})[output], None, path, owner=loaded)


def as_target(model: Target | keras.Model, gradcam_layer: str | None = None) -> Target:
  if isinstance(model, Target):
    return model
  if isinstance(model, keras.Model):
    return Target.from_keras(model, gradcam_layer)
  raise ValueError(f'Expected a keras.Model or an evaluation.Target, got {type(model).__name__}.')


# ---------------------------------------------------------------------------------------------
# Attacks by name.

@dataclasses.dataclass(frozen=True)
class AttackSettings:
  """Budgets and hyperparameters of the named attacks (all validated at construction).

  Attributes:
    eps: L-inf radius in [0, 1] shared by every attack.
    seed: base seed of the random starts.
    sigma: A^3 weight of the attention term (paper: 10).
    kappa: A^3 attention threshold: 'mean' (paper) or a number.
    gradcam_normalize: A^3's Grad-CAM scaling (`gradcam.NORMALIZATIONS`); the same map as AAD's
      training with that setting (trainers.evaluate uses the evaluated run's own by default).
    a3_num_steps: steps of iter_stepll, iter_stepll_a3 and pgd_a3 (paper: 3 on ImageNet at
      eps 4/255; default 10 so that pgd_a3 pairs with pgd10 of the grid).
    apgd_num_steps: APGD iterations per restart (paper: 100).
    apgd_restarts: APGD random restarts.
    apgd_target_classes: target classes of apgd_t.
    square_queries: Square Attack iterations after its start (1 + square_queries queries).
    square_p_init: Square Attack initial fraction of changed pixels.
    adaptive_num_steps: steps of the adaptive attack.
    adaptive_weight: weight of the relative attention shift in the adaptive attack.
  """
  eps: float
  seed: int = 0
  sigma: float = 10.0
  kappa: str | float = 'mean'
  gradcam_normalize: str = 'none'
  a3_num_steps: int = 10
  apgd_num_steps: int = 100
  apgd_restarts: int = 1
  apgd_target_classes: int = 9
  square_queries: int = 1000
  square_p_init: float = 0.8
  adaptive_num_steps: int = 100
  adaptive_weight: float = 1.0

  def __post_init__(self):
    attacks_lib.check_eps(self.eps)
    for name in ('a3_num_steps', 'apgd_num_steps', 'apgd_restarts', 'apgd_target_classes',
                 'square_queries', 'adaptive_num_steps'):
      value = getattr(self, name)
      if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}.')
    if self.sigma < 0 or self.adaptive_weight < 0:
      raise ValueError(f'sigma and adaptive_weight must be >= 0, got {self.sigma}, '
                       f'{self.adaptive_weight}.')
    if not 0.0 < self.square_p_init <= 1.0:
      raise ValueError(f'square_p_init must be in (0, 1], got {self.square_p_init}.')
    if isinstance(self.kappa, str) and self.kappa != 'mean':
      raise ValueError(f"kappa must be 'mean' or a number, got {self.kappa!r}.")
    if int(self.seed) != self.seed or self.seed < 0:
      raise ValueError(f'seed must be a non-negative integer, got {self.seed!r}.')
    gradcam_lib.check_normalize(self.gradcam_normalize)


# run(target, x [B,H,W,C], y [B], seed int32 [2]) -> x_adv [B,H,W,C]; or (x_adv, fooled bool
# [B]) from an attack that reports which examples it found misclassified itself; or (x_adv,
# {stage name: bool [B] correct after that stage}) from an attack run in stages (AutoAttack),
# its last stage's flags being its outcome. The evaluation keeps those verdicts (loop.py).
RunFn = Callable[[Target, tf.Tensor, tf.Tensor, tf.Tensor], Any]


@dataclasses.dataclass(frozen=True)
class Attack:
  """A named, configured attack.

  Attributes:
    name: the lower-case table header.
    run: (target, x, y, seed) -> x_adv, or None for `clean`.
    params: its hyperparameters, written to robustness.json.
    needs_features: needs `target.feature_fn` (Grad-CAM); skipped without it.
    gradient_free: uses only logits' values (for the gradient-masking diagnostics).
    single_step: a one-step attack (for the diagnostics).
  """
  name: str
  run: RunFn | None
  params: dict[str, Any] = dataclasses.field(default_factory=dict)
  needs_features: bool = False
  gradient_free: bool = False
  single_step: bool = False

  @property
  def gradient_based(self) -> bool:
    return self.run is not None and not self.gradient_free


def _iterative(name: str, kind: str, k: int, restarts: int, s: AttackSettings) -> Attack:
  if k < 1 or restarts < 1:
    raise ValueError(f'Attack {name!r}: steps and restarts must be >= 1.')
  if kind == 'iter_stepll':
    if restarts != 1:
      raise ValueError(f'Attack {name!r}: iter_stepll has no random start to restart.')
    step = s.eps / k
    return Attack(name, lambda t, x, y, seed: attacks_lib.iter_stepll(
        t.model_fn, x, y, eps=s.eps, step_size=step, num_steps=k),
                  {'num_steps': k, 'step_size': step})
  step = pgd_step_size(s.eps, k)
  loss = 'ce' if kind == 'pgd' else 'cw'
  return Attack(name, lambda t, x, y, seed: attacks_lib.pgd(
      t.model_fn, x, y, eps=s.eps, step_size=step, num_steps=k, loss=loss, random_init=True,
      num_restarts=restarts, seed=seed),
                {'num_steps': k, 'step_size': step, 'loss': loss, 'random_init': True,
                 'num_restarts': restarts})


def make_attack(name: str, settings: AttackSettings) -> Attack:
  """The attack called `name` (see the module docstring); ValueError for an unknown name."""
  s = settings
  eps = s.eps
  if name == 'clean':
    return Attack(name, None)
  if name == 'fgsm':
    return Attack(name, lambda t, x, y, seed: attacks_lib.fgsm(t.model_fn, x, y, eps=eps),
                  {'step_size': eps}, single_step=True)
  if name == 'stepll':
    return Attack(name, lambda t, x, y, seed: attacks_lib.stepll(t.model_fn, x, y, eps=eps),
                  {'step_size': eps}, single_step=True)
  if name == 'iter_stepll':
    return _iterative(name, 'iter_stepll', s.a3_num_steps, 1, s)
  a3_common = {'sigma': s.sigma, 'kappa': s.kappa, 'normalize': s.gradcam_normalize}
  if name == 'stepll_a3':
    return Attack(name, lambda t, x, y, seed: attacks_lib.a3(
        t.feature_fn, x, y, base='stepll', eps=eps, **a3_common),
                  {'step_size': eps, **a3_common}, needs_features=True, single_step=True)
  if name == 'iter_stepll_a3':
    step = eps / s.a3_num_steps
    return Attack(name, lambda t, x, y, seed: attacks_lib.a3(
        t.feature_fn, x, y, base='iter_stepll', eps=eps, step_size=step,
        num_steps=s.a3_num_steps, **a3_common),
                  {'num_steps': s.a3_num_steps, 'step_size': step, **a3_common},
                  needs_features=True)
  if name == 'pgd_a3':
    step = pgd_step_size(eps, s.a3_num_steps)
    return Attack(name, lambda t, x, y, seed: attacks_lib.a3(
        t.feature_fn, x, y, base='pgd', eps=eps, step_size=step, num_steps=s.a3_num_steps,
        random_init=True, **a3_common),
                  {'num_steps': s.a3_num_steps, 'step_size': step, 'random_init': True,
                   **a3_common}, needs_features=True)
  if name in ('apgd_ce', 'apgd_dlr'):
    loss = name.split('_')[1]
    return Attack(name, lambda t, x, y, seed: apgd_lib.apgd(
        t.model_fn, x, y, eps=eps, num_steps=s.apgd_num_steps, loss=loss,
        num_restarts=s.apgd_restarts, seed=seed, return_fooled=True),
                  {'num_steps': s.apgd_num_steps, 'num_restarts': s.apgd_restarts,
                   'loss': loss})
  if name == 'apgd_t':
    return Attack(name, lambda t, x, y, seed: apgd_lib.apgd_targeted(
        t.model_fn, x, y, eps=eps, num_steps=s.apgd_num_steps,
        num_target_classes=s.apgd_target_classes, seed=seed, return_fooled=True),
                  {'num_steps': s.apgd_num_steps,
                   'num_target_classes': s.apgd_target_classes})
  if name == 'fab_t':
    return Attack(name, lambda t, x, y, seed: fab_lib.fab_targeted(
        t.model_fn, x, y, eps=eps, num_target_classes=s.apgd_target_classes,
        return_fooled=True),
                  {'num_steps': 100, 'num_target_classes': s.apgd_target_classes,
                   'alpha_max': fab_lib.ALPHA_MAX, 'eta': fab_lib.ETA, 'beta': fab_lib.BETA})
  if name == 'autoattack':
    return Attack(name, lambda t, x, y, seed: autoattack_lib.autoattack_stages(
        t.model_fn, x, y, eps=eps, seed=seed, model=t.keras_model),
                  autoattack_lib.standard_params())
  if name == 'square':
    return Attack(name, lambda t, x, y, seed: square_lib.square_linf(
        t.model_fn, x, y, eps=eps, num_queries=s.square_queries, p_init=s.square_p_init,
        seed=seed, model=t.keras_model, return_fooled=True),
                  {'num_queries': s.square_queries, 'p_init': s.square_p_init},
                  gradient_free=True)
  if name == 'adaptive':
    step = pgd_step_size(eps, s.adaptive_num_steps)
    return Attack(name, lambda t, x, y, seed: attacks_lib.adaptive_attention(
        t.feature_fn, x, y, eps=eps, step_size=step, num_steps=s.adaptive_num_steps,
        weight=s.adaptive_weight, random_init=True, seed=seed),
                  {'num_steps': s.adaptive_num_steps, 'step_size': step,
                   'weight': s.adaptive_weight}, needs_features=True)
  match = _ITERATIVE.fullmatch(name)
  if match:
    kind, k, restarts = match.groups()
    return _iterative(name, kind, int(k), int(restarts or 1), s)
  raise ValueError(f'Unknown attack {name!r}; expected one of {", ".join(ALL_ATTACKS)}, '
                   f'fab_t, autoattack, pgd<k>, cw<k>, pgd<k>_r<n>, cw<k>_r<n> or '
                   f'iter_stepll<k>.')


def standard_attacks(names: Sequence[str], *, eps: float, seed: int = 0,
                     **settings) -> dict[str, Attack]:
  """The attacks called `names`, in order.

  Args:
    names: attack names (see the module docstring); 'worst_case' is always reported and may not
      be asked for; duplicates are an error.
    eps: L-inf radius in [0, 1].
    seed: base seed of the random starts.
    **settings: further `AttackSettings` fields (sigma, square_queries, ...).

  Returns:
    name -> Attack.
  """
  config = AttackSettings(eps=eps, seed=seed, **settings)
  names = list(names)
  if not names:
    raise ValueError('No attack given.')
  if WORST_CASE in names:
    raise ValueError(f"'{WORST_CASE}' is computed from the other attacks; do not list it.")
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'Attacks listed twice: {duplicates}.')
  return {name: make_attack(name, config) for name in names}
