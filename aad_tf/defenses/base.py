"""Base defenses, their one registry, and the configs of the training step.

A base defense (`BaseDefense`) is one adversarial training: how to craft the training examples
(`craft`) and the classification part of the loss (`loss`). It declares, next to its code,

  hyperparameters  a frozen dataclass (subclass of `Hyperparameters`) of `hyperparameter(...)`
                   fields: name (= absl flag name = key under `defense.hparams` in config.json),
                   type, default, one-line help, bounds or choices, further checks in `check`;
  metric_names     the names of the per-example loss parts its `loss` returns (logged as
                   train/<name>);

and registers itself with `register_defense(name, instance)` when its module is imported
(`aad_tf.defenses` imports every family module). `DefenseConfig(defense=name, hparams={...})`
then validates its hyperparameters, `AADModel` logs its metric names, and
`trainers/defense_flags.py` defines its flags; nothing else needs an edit.
"""

import abc
import copy
import dataclasses
import typing
from typing import Any, Callable, Mapping

import tensorflow as tf

from aad_tf import attacks
from aad_tf import gradcam as gradcam_lib
from aad_tf import losses


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The training attack (Madry et al.'s PGD by default).

  Attributes:
    eps: L-inf radius.
    step_size: size of each signed step.
    num_steps: PGD steps.
    random_init: random start in the ball.
    warmup_steps: ramp eps and step_size linearly from eps / warmup_steps to their full values
      over the first warmup_steps optimizer steps (0: no ramp). Adversarial training at MNIST's
      eps 0.3 from scratch can sit at chance for thousands of steps; a short ramp avoids that.
  """
  eps: float = 0.3
  step_size: float = 0.01
  num_steps: int = 40
  random_init: bool = True
  warmup_steps: int = 0

  def __post_init__(self):
    attacks.check_eps(self.eps)
    attacks.check_steps(self.step_size, self.num_steps)
    if not tf.is_tensor(self.warmup_steps) and self.warmup_steps < 0:
      raise ValueError(f'warmup_steps must be >= 0, got {self.warmup_steps}.')

  def at_step(self, step: tf.Tensor) -> 'AttackConfig':
    """This attack at optimizer step `step` (0-based), with the warm-up ramp applied."""
    if not self.warmup_steps:
      return self
    scale = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / float(self.warmup_steps))
    return dataclasses.replace(self, eps=self.eps * scale, step_size=self.step_size * scale,
                               warmup_steps=0)


# ---------------------------------------------------------------------------------------------
# Hyperparameters of a base defense.

def hyperparameter(default: Any, help: str, *, choices: tuple | None = None,
                   lower_bound: float | None = None, upper_bound: float | None = None,
                   path: bool = False) -> Any:
  """A field of a `Hyperparameters` dataclass.

  Args:
    default: the default value (also the flag's).
    help: one-line help of its flag.
    choices: the allowed values (a str field becomes an enum flag).
    lower_bound, upper_bound: inclusive bounds, checked by the config and by the flag.
    path: the value is a path (or a tuple of paths): made absolute in flags.txt / config.json.
  """
  return dataclasses.field(default=default, metadata={
      'help': help, 'choices': None if choices is None else tuple(choices),
      'lower_bound': lower_bound, 'upper_bound': upper_bound, 'path': path})


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
  """A base defense's hyperparameters; this base class itself is "none".

  Subclass it as a frozen dataclass whose fields are `hyperparameter(...)`s; their annotations
  (bool, int, float, str or tuple[str, ...]) are the types of the values and flags. Choices and
  bounds are checked at construction (lists become tuples), then `check`.
  """

  def __post_init__(self):
    types = typing.get_type_hints(type(self))
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if typing.get_origin(types[field.name]) is tuple:
        value = tuple(value)
        object.__setattr__(self, field.name, value)
      meta = field.metadata
      if meta.get('choices') is not None and value not in meta['choices']:
        raise ValueError(f'{field.name} must be one of {meta["choices"]}, got {value!r}.')
      if meta.get('lower_bound') is not None and value < meta['lower_bound']:
        raise ValueError(f'{field.name} must be >= {meta["lower_bound"]:g}, got {value}.')
      if meta.get('upper_bound') is not None and value > meta['upper_bound']:
        raise ValueError(f'{field.name} must be <= {meta["upper_bound"]:g}, got {value}.')
    self.check()

  def check(self) -> None:
    """Further validation; raises ValueError (choices and bounds are already checked)."""


def hyperparameter_fields(spec: type[Hyperparameters]
                          ) -> tuple[tuple[dataclasses.Field, Any], ...]:
  """((field, type), ...) of a Hyperparameters class, in declaration order."""
  types = typing.get_type_hints(spec)
  return tuple((field, types[field.name]) for field in dataclasses.fields(spec))


def _resolve_hparams(name: str, spec: type[Hyperparameters], hparams) -> Hyperparameters:
  """`hparams` (None, a mapping, or a Hyperparameters) as an instance of defense `name`'s spec."""
  if hparams is None:
    return spec()
  if type(hparams) is spec:  # pylint: disable=unidiomatic-typecheck
    return hparams
  if isinstance(hparams, Hyperparameters):  # another defense's, e.g. after replace(defense=...)
    names = {field.name for field in dataclasses.fields(spec)}
    return spec(**{k: v for k, v in dataclasses.asdict(hparams).items() if k in names})
  if isinstance(hparams, Mapping):
    names = [field.name for field in dataclasses.fields(spec)]
    unknown = sorted(set(hparams) - set(names))
    if unknown:
      raise ValueError(f'defense {name!r} has no hyperparameter {", ".join(unknown)}; its '
                       f'hyperparameters: {", ".join(names) or "none"}.')
    return spec(**hparams)
  raise ValueError(f'hparams must be a mapping or a Hyperparameters, got '
                   f'{type(hparams).__name__}.')


# ---------------------------------------------------------------------------------------------
# Base defenses and their registry.

# Logged by AADModel itself; a base defense's metric names must differ from these.
RESERVED_METRIC_NAMES = ('loss', 'rect_loss', 'pres_loss', 'clean_acc', 'adv_acc')


class BaseDefense(abc.ABC):
  """One base adversarial training: how to craft x_adv and the classification part of the loss.

  Attributes:
    adversarial: whether `craft` produces adversarial examples.
    needs_clean_logits: whether `loss` uses training-mode clean logits.
    hyperparameters: its Hyperparameters dataclass (`config.hparams` is an instance).
    metric_names: the keys of the parts dict `loss` returns, in logging order.
  """
  adversarial = True
  needs_clean_logits = False
  hyperparameters: type[Hyperparameters] = Hyperparameters
  metric_names: tuple[str, ...] = ('class_loss',)

  def check_config(self, config: 'DefenseConfig') -> None:
    """Raises ValueError if `config` lacks what this defense needs (called by DefenseConfig)."""

  def check_inputs(self, config: 'DefenseConfig', *, input_shape: tuple[int, ...],
                   num_classes: int) -> None:
    """Raises ValueError if this defense cannot train on these inputs (checked before training).

    Args:
      config: the DefenseConfig.
      input_shape: (H, W, C) of the dataset's images.
      num_classes: the dataset's classes.
    """

  _seed_fn: Callable[[], tf.Tensor] | None = None

  def bind(self, model) -> 'BaseDefense':
    """The instance `model` (an AADModel) trains with: a copy whose `step_seed` follows it."""
    bound = copy.copy(self)
    bound._seed_fn = model.step_seed
    return bound

  def step_seed(self) -> tf.Tensor | None:
    """A stateless seed [2] for this step's random draws (None when not bound to a model).

    A function of (model seed, optimizer step, replica), so the draws repeat exactly when a run
    resumes from a checkpoint; stateful random ops (tf.random.uniform) would restart their stream.
    """
    return None if self._seed_fn is None else self._seed_fn()

  def craft(self, model_fn: attacks.ModelFn, x: tf.Tensor, y: tf.Tensor,
            config: 'DefenseConfig') -> tf.Tensor | None:
    """Training examples [B, H, W, C] for x (no gradient), or None for clean training."""
    a = config.attack
    return attacks.pgd(model_fn, x, y, eps=a.eps, step_size=a.step_size,
                       num_steps=a.num_steps, random_init=a.random_init,
                       seed=self.step_seed() if a.random_init else None)

  @abc.abstractmethod
  def loss(self, y, clean_logits, adv_logits, config: 'DefenseConfig'
           ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Returns (per-example loss [B], per-example parts [B] named by `metric_names`)."""


# The one registry of base defenses: name -> instance (add with register_defense).
BASE_DEFENSES: dict[str, BaseDefense] = {}


def register_defense(name: str, defense: BaseDefense) -> None:
  """Adds a base defense usable as DefenseConfig(defense=name) and as --defense=name.

  Raises:
    ValueError: the name is taken, a metric name is AADModel's own, or a hyperparameter shares
      its name with another defense's without being the same declaration (one flag serves both).
  """
  if name in BASE_DEFENSES:
    raise ValueError(f'Defense {name!r} is already registered.')
  spec = defense.hyperparameters
  if not (isinstance(spec, type) and issubclass(spec, Hyperparameters) and
          dataclasses.is_dataclass(spec)):
    raise ValueError(f'Defense {name!r}: hyperparameters must be a Hyperparameters dataclass.')
  reserved = sorted(set(defense.metric_names) & set(RESERVED_METRIC_NAMES))
  if reserved or len(set(defense.metric_names)) != len(defense.metric_names):
    raise ValueError(f'Defense {name!r}: metric_names {defense.metric_names} must be distinct and '
                     f'differ from {RESERVED_METRIC_NAMES}.')
  declared = all_hyperparameters()
  for field, kind in hyperparameter_fields(spec):
    if field.name in declared:
      other, other_kind = declared[field.name]
      if (other_kind, other.default, dict(other.metadata)) != (kind, field.default,
                                                               dict(field.metadata)):
        raise ValueError(f'Defense {name!r}: hyperparameter {field.name!r} is declared '
                         f'differently by another defense (share the declaration).')
  BASE_DEFENSES[name] = defense


def unregister_defense(name: str) -> None:
  """Removes a registered defense (for tests that register a toy one)."""
  del BASE_DEFENSES[name]


def get_defense(name: str) -> BaseDefense:
  """The registered base defense `name`; ValueError naming the choices otherwise."""
  if name not in BASE_DEFENSES:
    raise ValueError(f'defense must be one of {sorted(BASE_DEFENSES)}, got {name!r}.')
  return BASE_DEFENSES[name]


def all_hyperparameters() -> dict[str, tuple[dataclasses.Field, Any]]:
  """{name: (field, type)} of every registered defense's hyperparameters (shared ones once)."""
  declared = {}
  for defense in BASE_DEFENSES.values():
    for field, kind in hyperparameter_fields(defense.hyperparameters):
      declared.setdefault(field.name, (field, kind))
  return declared


def metric_names() -> tuple[str, ...]:
  """Every name a training step can log a loss term under: AADModel's and each defense's."""
  names = ['loss']
  for defense in BASE_DEFENSES.values():
    names += [name for name in defense.metric_names if name not in names]
  return tuple(names) + ('rect_loss', 'pres_loss')


# ---------------------------------------------------------------------------------------------
# What the training step optimises.

ATTENTION_MODES = ('inference', 'batch', 'training')

# Fields of config.json's "defense" written before each base defense owned its hyperparameters
# (they were flat DefenseConfig fields); `DefenseConfig.from_json` moves them into hparams.
_FLAT_HPARAMS_BEFORE_ISSUE_16 = ('alp_weight', 'trades_beta', 'stepll_random_step',
                                 'ensemble_models', 'ensemble_attack')


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
  """What the training step optimises.

  Attributes:
    defense: base adversarial training, a key of `BASE_DEFENSES` ('none', 'madry', 'alp', ...).
    aad: add AAD's rectification and preservation losses.
    alpha: weight of the rectification loss (paper: 0.01).
    beta: weight of the preservation loss (paper: 0.01).
    kappa: attention threshold, 'mean' (paper) or a fixed float.
    classification_loss: 'ce' or 'soft_margin' (the paper's multi-label soft margin).
    attack: the attack crafting training examples.
    gradcam_normalize: scaling of the Grad-CAM maps that L_p and the masks use, one of
      `gradcam.NORMALIZATIONS` ('none': raw maps, the TOMM text; 'max'; 'rms_softmax': the
      authors' TF1 code). See aad_tf.gradcam.
    attention_mode: 'inference' (noise-free attention passes on BatchNorm's moving statistics, one
      BatchNorm update per step), 'batch' (attention passes on batch statistics, still one
      update per step) or 'training' (the earlier behaviour: training-mode passes, four
      updates); see aad_tf.defenses.model.
    hparams: the base defense's hyperparameters: given as None (its defaults), a mapping
      {name: value} (the others default) or its Hyperparameters instance; always stored as the
      instance (e.g. `config.hparams.trades_beta`).
  """
  defense: str = 'madry'
  aad: bool = False
  alpha: float = 0.01
  beta: float = 0.01
  kappa: str | float = 'mean'
  classification_loss: str = 'ce'
  attack: AttackConfig = AttackConfig()
  gradcam_normalize: str = 'none'
  attention_mode: str = 'inference'
  hparams: Hyperparameters | Mapping[str, Any] | None = None

  def __post_init__(self):
    base = get_defense(self.defense)
    object.__setattr__(self, 'hparams',
                       _resolve_hparams(self.defense, base.hyperparameters, self.hparams))
    if self.classification_loss not in losses.CLASSIFICATION_LOSSES:
      raise ValueError(f'classification_loss must be one of {losses.CLASSIFICATION_LOSSES}, '
                       f'got {self.classification_loss!r}.')
    if self.aad and not base.adversarial:
      raise ValueError(f'aad needs adversarial examples; defense {self.defense!r} crafts none '
                       f'(use madry, alp, ...).')
    for name in ('alpha', 'beta'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}.')
    if isinstance(self.kappa, str) and self.kappa != 'mean':
      raise ValueError(f"kappa must be 'mean' or a number, got {self.kappa!r}.")
    gradcam_lib.check_normalize(self.gradcam_normalize)
    if self.attention_mode not in ATTENTION_MODES:
      raise ValueError(f'attention_mode must be one of {ATTENTION_MODES}, got '
                       f'{self.attention_mode!r}.')
    base.check_config(self)

  @classmethod
  def from_json(cls, payload: Mapping[str, Any]) -> 'DefenseConfig':
    """The DefenseConfig that config.json's "defense" holds (unknown keys are ignored).

    Reads both layouts: hyperparameters under "hparams" (written since issue 16), and the flat
    fields of earlier runs (alp_weight, trades_beta, stepll_random_step, ensemble_models,
    ensemble_attack), of which the run's own defense's are kept.
    """
    payload = dict(payload)
    attack = payload.get('attack') or {}
    if not isinstance(attack, AttackConfig):
      names = {field.name for field in dataclasses.fields(AttackConfig)}
      attack = AttackConfig(**{k: v for k, v in attack.items() if k in names})
    payload['attack'] = attack
    if payload.get('hparams') is None:
      name = payload.get('defense', cls.defense)
      if name in BASE_DEFENSES:
        own = {field.name for field in dataclasses.fields(BASE_DEFENSES[name].hyperparameters)}
        payload['hparams'] = {k: payload[k] for k in _FLAT_HPARAMS_BEFORE_ISSUE_16
                              if k in payload and k in own}
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in payload.items() if k in names})

  def map_paths(self, fn: Callable[[str], str]) -> 'DefenseConfig':
    """This config with `fn` applied to every path hyperparameter (e.g. to make them absolute)."""
    changes = {}
    for field in dataclasses.fields(self.hparams):
      if field.metadata.get('path'):
        value = getattr(self.hparams, field.name)
        changes[field.name] = (type(value)(fn(p) for p in value)
                               if isinstance(value, (tuple, list)) else fn(value))
    if not changes:
      return self
    return dataclasses.replace(self, hparams=dataclasses.replace(self.hparams, **changes))
