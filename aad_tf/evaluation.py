"""Robust accuracy of a classifier under a set of attacks, batched and compiled.

    attacks = standard_attacks(['clean', 'fgsm', 'pgd20'], eps=0.3)
    report = evaluate(classifier, eval_dataset, attacks, gradcam_layer='gradcam')
    print(format_table(report))

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
                            5000 queries, each on the examples still robust; `aad_tf.autoattack`),
                            its fixed budgets whatever the settings; optional.
  square                    gradient-free Square Attack (Andriushchenko et al. 2020),
                            `square_queries` queries.
  adaptive                  misclassify while keeping Grad-CAM close to the clean map
                            (`attacks.adaptive_attention`), PGD steps of 2.5 * eps / k.
The A^3 attacks and `adaptive` need the Grad-CAM features of the model (a Keras classifier and its
Grad-CAM layer); against logits alone (a SavedModel) they are skipped and the report says so.

Each attack is wrapped in one `tf.function` with a fixed input signature (images, labels, seed),
so it traces once for the whole test set; random starts are stateless functions of
(seed, attack name, batch index), so a report is reproducible. `worst_case` counts an example as
robust only if it is classified correctly under every attack that was run (clean included).
"""

import dataclasses
import re
import time
import zlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf.attacks import apgd as apgd_lib
from aad_tf import attacks as attacks_lib
from aad_tf.attacks import autoattack as autoattack_lib
from aad_tf.attacks import fab as fab_lib
from aad_tf import gradcam as gradcam_lib
from aad_tf.attacks import square as square_lib

DEFAULT_EPS = {'mnist': 0.3, 'cifar10': 8 / 255, 'imagenet': 16 / 255, 'boxed_mnist': 0.3}

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
  """
  model_fn: ModelFn
  feature_fn: Optional[gradcam_lib.FeatureFn] = None
  name: str = 'model'
  owner: Any = None

  @classmethod
  def from_keras(cls, classifier: keras.Model, gradcam_layer: Optional[str] = None
                 ) -> 'Target':
    """A Keras classifier (logits output); Grad-CAM features if `gradcam_layer` is given."""
    feature_fn = None
    if gradcam_layer is not None:
      feature_fn = gradcam_lib.FeatureModel(classifier, gradcam_layer).fn(training=False)
    return cls(lambda images: classifier(images, training=False), feature_fn, classifier.name)

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


def as_target(model: Union[Target, keras.Model], gradcam_layer: Optional[str] = None) -> Target:
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
    square_queries: Square Attack query budget per example.
    square_p_init: Square Attack initial fraction of changed pixels.
    adaptive_num_steps: steps of the adaptive attack.
    adaptive_weight: weight of the relative attention shift in the adaptive attack.
  """
  eps: float
  seed: int = 0
  sigma: float = 10.0
  kappa: Union[str, float] = 'mean'
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


# run(target, x [B,H,W,C], y [B], seed int32 [2]) -> x_adv [B,H,W,C]
RunFn = Callable[[Target, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


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
  run: Optional[RunFn]
  params: Dict[str, Any] = dataclasses.field(default_factory=dict)
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
        num_restarts=s.apgd_restarts, seed=seed),
                  {'num_steps': s.apgd_num_steps, 'num_restarts': s.apgd_restarts,
                   'loss': loss})
  if name == 'apgd_t':
    return Attack(name, lambda t, x, y, seed: apgd_lib.apgd_targeted(
        t.model_fn, x, y, eps=eps, num_steps=s.apgd_num_steps,
        num_target_classes=s.apgd_target_classes, seed=seed),
                  {'num_steps': s.apgd_num_steps,
                   'num_target_classes': s.apgd_target_classes})
  if name == 'fab_t':
    return Attack(name, lambda t, x, y, seed: fab_lib.fab_targeted(
        t.model_fn, x, y, eps=eps, num_target_classes=s.apgd_target_classes),
                  {'num_steps': 100, 'num_target_classes': s.apgd_target_classes,
                   'alpha_max': fab_lib.ALPHA_MAX, 'eta': fab_lib.ETA, 'beta': fab_lib.BETA})
  if name == 'autoattack':
    return Attack(name, lambda t, x, y, seed: autoattack_lib.autoattack(
        t.model_fn, x, y, eps=eps, seed=seed), autoattack_lib.standard_params())
  if name == 'square':
    return Attack(name, lambda t, x, y, seed: square_lib.square_linf(
        t.model_fn, x, y, eps=eps, num_queries=s.square_queries, p_init=s.square_p_init,
        seed=seed),
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
                     **settings) -> Dict[str, Attack]:
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


# ---------------------------------------------------------------------------------------------
# Running attacks.

def attack_seed(seed: int, name: str, batch_index: int) -> tf.Tensor:
  """The stateless seed [2] of one attack on one batch (independent of the attack order)."""
  return tf.constant([int(seed) % 2**31, (zlib.crc32(name.encode()) + 7919 * batch_index)
                      % 2**31], tf.int32)


def _as_attack(name: str, attack) -> Attack:
  """Accepts an Attack, None (clean) or a legacy fn(model_fn, x, y) -> x_adv."""
  if isinstance(attack, Attack):
    return attack
  if attack is None:
    return Attack(name, None)
  if callable(attack):
    return Attack(name, lambda t, x, y, seed: attack(t.model_fn, x, y))
  raise ValueError(f'Attack {name!r} must be an evaluation.Attack, a callable or None.')


def compile_attack(model: Union[Target, keras.Model], attack, image_shape,
                   gradcam_layer: Optional[str] = None) -> Callable[..., tf.Tensor]:
  """A compiled (x, y, seed=(0, 0)) -> bool [B] 'still correctly classified' under `attack`.

  One `tf.function` (the returned callable's `tf_function`) with input signature
  (float32 [None, *image_shape], int32 [None], int32 [2]): it traces once whatever the batch size.
  """
  target = as_target(model, gradcam_layer)
  attack = _as_attack(getattr(attack, 'name', 'attack'), attack)
  if attack.needs_features and target.feature_fn is None:
    raise ValueError(f'Attack {attack.name!r} needs Grad-CAM features: pass a Keras classifier '
                     f'and its gradcam_layer.')
  spec = (tf.TensorSpec([None, *image_shape], tf.float32), tf.TensorSpec([None], tf.int32),
          tf.TensorSpec([2], tf.int32))

  @tf.function(input_signature=spec)
  def correct(x, y, seed):
    x_eval = x if attack.run is None else attack.run(target, x, y, seed)
    pred = tf.argmax(target.model_fn(x_eval), axis=-1, output_type=tf.int32)
    return tf.equal(pred, y)

  def call(x, y, seed=(0, 0)):
    return correct(tf.cast(x, tf.float32), tf.cast(y, tf.int32),
                   tf.cast(tf.convert_to_tensor(seed), tf.int32))

  call.tf_function = correct  # e.g. to count traces
  return call


@dataclasses.dataclass
class Report:
  """Per-attack accuracy (fractions), per-example worst case, timing, skips and diagnostics.

  Attributes:
    num_examples: examples evaluated.
    accuracy: attack name -> accuracy in [0, 1], in the order the attacks ran.
    seconds: attack name -> wall time.
    correct: attack name -> bool [num_examples], correctly classified under that attack.
    skipped: attack name -> why it was not run.
    params: attack name -> its hyperparameters.
    diagnostics: gradient-masking checks (`aad_tf.diagnostics.Diagnostic.to_json()` dicts).
  """
  num_examples: int
  accuracy: Dict[str, float]
  seconds: Dict[str, float]
  correct: Dict[str, np.ndarray]
  skipped: Dict[str, str] = dataclasses.field(default_factory=dict)
  params: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
  diagnostics: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

  @property
  def worst_case_correct(self) -> np.ndarray:
    """bool [num_examples]: correct under every attack that was run."""
    if not self.correct:
      return np.zeros([0], bool)
    return np.logical_and.reduce(list(self.correct.values()))

  @property
  def worst_case(self) -> float:
    if not self.correct or not self.num_examples:
      return float('nan')
    return float(np.mean(self.worst_case_correct))

  @property
  def diagnostics_fired(self) -> List[str]:
    return [d['name'] for d in self.diagnostics if d.get('fired')]

  def to_json(self) -> Dict[str, object]:
    return {'num_examples': self.num_examples,
            'accuracy': {**self.accuracy, WORST_CASE: self.worst_case},
            'seconds': self.seconds, 'skipped': self.skipped, 'attacks': self.params,
            'diagnostics': self.diagnostics,
            'gradient_masking_suspected': bool(self.diagnostics_fired)}


def evaluate(model: Union[Target, keras.Model], dataset: tf.data.Dataset,
             attacks: Mapping[str, Any], progress: bool = True, *,
             gradcam_layer: Optional[str] = None, seed: int = 0,
             first_batch: int = 0) -> Report:
  """Accuracy of `model` on `dataset` ((x, y) batches) under each attack.

  Args:
    model: a Keras classifier (logits) or a `Target`.
    dataset: batches of images [B, H, W, C] in [0, 1] and int labels [B].
    attacks: name -> Attack (or None for clean, or a legacy fn(model_fn, x, y)).
    progress: show a progress bar per attack.
    gradcam_layer: with a Keras classifier, its Grad-CAM layer (enables A^3 and adaptive).
    seed: base seed of the random starts (mixed with the attack name and batch index).
    first_batch: the index of the dataset's first batch within a larger evaluation: a set
      evaluated in pieces (examples [0, n), then [n, 2n) with first_batch = n / B) gets the
      random starts of one evaluation of the whole.

  Returns:
    The Report; attacks that need Grad-CAM features the model cannot give are in `skipped`.
  """
  target = as_target(model, gradcam_layer)
  image_shape = tuple(dataset.element_spec[0].shape[1:])
  num_batches = int(dataset.cardinality())
  report = Report(0, {}, {}, {})
  for name, attack in attacks.items():
    attack = _as_attack(name, attack)
    if attack.needs_features and target.feature_fn is None:
      report.skipped[name] = ('needs the Grad-CAM features of the model (its Keras classifier '
                              'and Grad-CAM layer); a SavedModel gives logits only')
      logging.warning('Skipping %s: %s.', name, report.skipped[name])
      continue
    fn = compile_attack(target, attack, image_shape)
    started = time.time()
    chunks: List[np.ndarray] = []
    bar = keras.utils.Progbar(num_batches if num_batches > 0 else None, unit_name='batch',
                              verbose=1 if progress else 0)
    logging.info('Running %s (%s).', name, attack.params or 'no attack')
    for index, (x, y) in enumerate(dataset):
      chunks.append(fn(x, y, attack_seed(seed, name, first_batch + index)).numpy())
      bar.add(1, values=[('acc', float(np.concatenate(chunks).mean()))])
    correct = np.concatenate(chunks) if chunks else np.zeros([0], bool)
    report.correct[name] = correct
    report.accuracy[name] = float(correct.mean()) if correct.size else float('nan')
    report.seconds[name] = time.time() - started
    report.params[name] = dict(attack.params)
    report.num_examples = int(correct.size)
    logging.info('%-14s accuracy %.4f (%d examples, %.1f s)', name, report.accuracy[name],
                 correct.size, report.seconds[name])
  return report


# ---------------------------------------------------------------------------------------------
# Tables.

def _section(name: str) -> int:
  """0: the paper grid (clean, fgsm, pgd<k>, cw<k>), 1: the A^3 pairs, 2: everything else."""
  if name in ('clean', 'fgsm') or re.fullmatch(r'(pgd|cw)\d+', name):
    return 0
  if name in A3_ATTACKS or re.fullmatch(r'iter_stepll\d+', name):
    return 1
  return 2


def _grid_key(name: str):
  """Paper order: clean, fgsm, then PGD and CW by increasing steps."""
  match = re.fullmatch(r'(pgd|cw)(\d+)', name)
  if match:
    return (2 if match.group(1) == 'pgd' else 3, int(match.group(2)))
  return (0 if name == 'clean' else 1, 0)


_SECTION_TITLES = ('Paper grid (Table 6 layout)', 'A^3 next to the plain attacks (Table 7 layout)',
                   'Strong, adaptive and gradient-free attacks')


def _table(columns: Sequence[str], row_name: str, values: Mapping[str, float]) -> str:
  return '\n'.join(['| | ' + ' | '.join(columns) + ' |', '|---|' + '---|' * len(columns),
                    f'| {row_name} | ' + ' | '.join(f'{100 * values[n]:.2f}' for n in columns)
                    + ' |'])


def format_table(report: Report, row_name: str = 'model') -> str:
  """Markdown tables, accuracies in percent, columns named by the attack names.

  The attacks are grouped as in the paper: the grid (Table 6: clean, fgsm, pgd<k>, cw<k>), the
  A^3 pairs (Table 7; `pgd_a3` sits next to the plain PGD with the same steps when that was run)
  and the strong attacks; `worst_case` ends the last table. One group gives one table, without a
  title. Skipped attacks and the gradient-masking diagnostics follow.
  """
  sections = [[], [], []]
  for name in report.accuracy:
    sections[_section(name)].append(name)
  sections[0].sort(key=_grid_key)
  a3_order = {n: i for i, n in enumerate(A3_ATTACKS)}
  sections[1].sort(key=lambda n: a3_order.get(n, len(a3_order)))
  a3_steps = report.params.get('pgd_a3', {}).get('num_steps')
  if a3_steps and 'pgd_a3' in sections[1] and f'pgd{a3_steps}' in report.accuracy:
    sections[1].insert(sections[1].index('pgd_a3'), f'pgd{a3_steps}')
  groups = [(title, names) for title, names in zip(_SECTION_TITLES, sections) if names]
  if not groups:
    groups = [(_SECTION_TITLES[0], [])]
  values = {**report.accuracy, WORST_CASE: report.worst_case}
  blocks = []
  for index, (title, names) in enumerate(groups):
    columns = names + ([WORST_CASE] if index == len(groups) - 1 else [])
    table = _table(columns, row_name, values)
    blocks.append(f'{title}\n\n{table}' if len(groups) > 1 else table)
  if report.skipped:
    blocks.append('Skipped: ' + '; '.join(f'{n} ({why})' for n, why in report.skipped.items()))
  if report.diagnostics:
    blocks.append(format_diagnostics(report.diagnostics))
  return '\n\n'.join(blocks)


def format_diagnostics(diagnostics: Sequence[Mapping[str, Any]]) -> str:
  """A Markdown table of the gradient-masking checks."""
  rows = []
  for d in diagnostics:
    verdict = '**FIRED**' if d['fired'] else ('not run' if d.get('value') is None else 'ok')
    value = '-' if d.get('value') is None else f"{d['value']:.4g}"
    rows.append(f"| {d['name']} | {verdict} | {value} | {d['threshold']:.4g} | "
                f"{d['message']} |")
  return '\n'.join(['Gradient-masking diagnostics', '',
                    '| check | verdict | value | threshold | meaning |',
                    '|---|---|---|---|---|', *rows])
