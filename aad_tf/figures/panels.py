"""Computing activation-map panels: Grad-CAM of clean and adversarial images (TensorFlow)."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from aad_tf import attacks
from aad_tf import data as data_lib
from aad_tf import defenses as defense_lib
from aad_tf import gradcam as gradcam_lib


EXPLAIN = ('label', 'prediction')


def class_names(dataset: str, num_classes: int = 10) -> tuple[str, ...]:
  """Display names of the classes of `dataset`: its registry entry's (class ids as text for a
  dataset that is not registered)."""
  if dataset in data_lib.available_datasets():
    return data_lib.get_info(dataset).class_names
  return tuple(str(i) for i in range(num_classes))


def pick_examples(labels: np.ndarray, num: int) -> np.ndarray:
  """Indices of `num` examples covering the classes in turn: the first 0, the first 1, ...

  A fixed, label-balanced choice, so panels from different runs show the same images.
  """
  labels = np.asarray(labels)
  if num < 1 or num > len(labels):
    raise ValueError(f'num must be in [1, {len(labels)}], got {num}.')
  by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
  chosen: list[int] = []
  while len(chosen) < num:
    for indices in by_class:
      if indices and len(chosen) < num:
        chosen.append(int(indices.pop(0)))
  return np.asarray(chosen)





@dataclasses.dataclass(frozen=True)
class AttentionPanel:
  """Grad-CAM maps of a few images and of their adversarial versions (NumPy).

  Attributes:
    images: float32 [N, H, W, C] in [0, 1].
    labels: int [N] true classes.
    cams: float32 [N, H, W] clean maps in [0, 1] (each scaled by its maximum), input resolution.
    probs: float32 [N, K] softmax on the clean images.
    adv_images: float32 [N, H, W, C], the attack's output.
    adv_cams: float32 [N, H, W] maps of the adversarial images.
    adv_probs: float32 [N, K].
    attack: a short description, e.g. 'PGD-40 eps=0.3'.
  """
  images: np.ndarray
  labels: np.ndarray
  cams: np.ndarray
  probs: np.ndarray
  adv_images: np.ndarray
  adv_cams: np.ndarray
  adv_probs: np.ndarray
  attack: str

  @property
  def predictions(self) -> np.ndarray:
    return self.probs.argmax(-1)

  @property
  def adv_predictions(self) -> np.ndarray:
    return self.adv_probs.argmax(-1)

  def take(self, indices) -> 'AttentionPanel':
    """The panel restricted to `indices`."""
    indices = np.asarray(indices)
    return dataclasses.replace(self, **{
        f.name: getattr(self, f.name)[indices]
        for f in dataclasses.fields(self) if f.name != 'attack'})


def describe_attack(attack: defense_lib.AttackConfig) -> str:
  if attack.num_steps == 0 or attack.eps == 0:
    return 'no attack (eps=0)' if attack.eps == 0 else f'random start eps={attack.eps:g}'
  return f'PGD-{attack.num_steps} eps={attack.eps:g}'


class PanelMaker:
  """Computes `AttentionPanel`s of a classifier with one compiled function.

  The adversarial images come from PGD with `attack` (the training attack of a run) against the
  classifier in inference mode, from a fixed random start (`seed`), so consecutive panels of a
  training run differ only because the weights changed.

  Args:
    classifier: functional keras.Model, images [B, H, W, C] in [0, 1] -> logits [B, K].
    gradcam_layer: name of its Grad-CAM layer.
    attack: the PGD configuration.
    explain: 'label' (Grad-CAM of the true class, as the AAD losses use) or 'prediction'.
    seed: seed of PGD's random start.
  """

  def __init__(self, classifier: keras.Model, gradcam_layer: str,
               attack: defense_lib.AttackConfig, *, explain: str = 'label', seed: int = 0):
    if explain not in EXPLAIN:
      raise ValueError(f'explain must be one of {EXPLAIN}, got {explain!r}.')
    if not isinstance(attack, defense_lib.AttackConfig):
      raise ValueError(f'attack must be a defense.AttackConfig, got {type(attack).__name__}.')
    image_shape = tuple(classifier.input_shape[1:])
    if None in image_shape:
      raise ValueError(f'The classifier needs a fixed input shape, got {image_shape}.')
    self.classifier = classifier
    self.attack = attack
    self.explain = explain
    features = gradcam_lib.FeatureModel(classifier, gradcam_layer)
    feature_fn = features.fn(training=False)
    model_fn = lambda images: classifier(images, training=False)
    size = image_shape[:2]
    pgd_seed = tf.constant([seed, 0], tf.int32)

    def maps(x, y):
      cam, logits = gradcam_lib.gradcam(feature_fn, x, y if explain == 'label' else None)
      cam = gradcam_lib.upsample_cam(gradcam_lib.normalize_cam(cam), size)
      return tf.clip_by_value(cam, 0.0, 1.0), tf.nn.softmax(tf.cast(logits, tf.float32))

    @tf.function(input_signature=(tf.TensorSpec([None, *image_shape], tf.float32),
                                  tf.TensorSpec([None], tf.int32)))
    def compute(x, y):
      x_adv = attacks.pgd(model_fn, x, y, eps=attack.eps, step_size=attack.step_size,
                          num_steps=attack.num_steps, random_init=attack.random_init,
                          seed=pgd_seed)
      cam, probs = maps(x, y)
      adv_cam, adv_probs = maps(x_adv, y)
      return cam, probs, x_adv, adv_cam, adv_probs

    self._compute = compute

  def __call__(self, images, labels) -> AttentionPanel:
    """Maps of `images` float [N, H, W, C] in [0, 1] with true `labels` int [N]."""
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels).astype(np.int32)
    if images.ndim != 4 or len(images) != len(labels) or not len(images):
      raise ValueError(f'Expected images [N, H, W, C] and labels [N] with N >= 1, got '
                       f'{images.shape} and {labels.shape}.')
    cam, probs, x_adv, adv_cam, adv_probs = (
        t.numpy() for t in self._compute(tf.constant(images), tf.constant(labels)))
    return AttentionPanel(images, labels, cam, probs, x_adv, adv_cam, adv_probs,
                          describe_attack(self.attack))
