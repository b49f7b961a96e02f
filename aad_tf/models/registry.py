"""Model registry: every backbone is a functional Keras classifier returning logits.

Each entry records the name of the layer whose output Grad-CAM uses (the "Grad-CAM layer"),
so that `aad_tf.gradcam.FeatureModel` can expose (features, logits) for any backbone.

    model = get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
    spec = get_spec('lenet')          # spec.gradcam_layer == 'gradcam'

New backbones register themselves with `register_model` (see WORKSPACE.md); `aad_tf.models`
imports every backbone module, so the registry is complete whenever the package is imported.
"""

import dataclasses
from typing import Callable

import keras


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build one backbone.

  Attributes:
    name: registry key.
    builder: `builder(input_shape, num_classes, **kwargs) -> keras.Model` returning logits.
    gradcam_layer: name of the layer whose output [B, h, w, K] Grad-CAM weights.
    description: one line for `--help` and docs.
  """
  name: str
  builder: Callable[..., keras.Model]
  gradcam_layer: str
  description: str = ''


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, gradcam_layer: str, description: str = ''):
  """Decorator registering `builder` under `name`."""

  def wrap(builder):
    if name in _REGISTRY:
      raise ValueError(f'Model {name!r} is already registered.')
    _REGISTRY[name] = ModelSpec(name, builder, gradcam_layer, description)
    return builder

  return wrap


def available_models() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def get_spec(name: str) -> ModelSpec:
  if name not in _REGISTRY:
    raise ValueError(
        f'Unknown model {name!r}; choose one of {", ".join(available_models())}.')
  return _REGISTRY[name]


def get_model(name: str, *, input_shape, num_classes: int, **kwargs) -> keras.Model:
  """Builds the registered classifier `name` (logits output, no softmax)."""
  spec = get_spec(name)
  model = spec.builder(tuple(input_shape), int(num_classes), **kwargs)
  # Fail early if a builder forgot to name its Grad-CAM layer.
  model.get_layer(spec.gradcam_layer)
  return model


# Registration side effects.
