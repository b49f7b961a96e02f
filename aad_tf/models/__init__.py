"""Backbones: every one is a functional Keras classifier returning logits, in one registry.

Modules:
  registry  ModelSpec, register_model / get_model / get_spec / available_models
  lenet     LeNet (MNIST, the paper's Madry et al. network)
  resnet9   ResNet9 (CIFAR-10)
  imagenet  ResNet50 (keras-cv or keras.applications) and InceptionV3 (ImageNet)

    model = models.get_model('lenet', input_shape=(28, 28, 1), num_classes=10)
    spec = models.get_spec('lenet')          # spec.gradcam_layer == 'gradcam'

A new backbone is one module that decorates its builder with `register_model`; import it here.
"""

from aad_tf.models.registry import ModelSpec
from aad_tf.models.registry import available_models
from aad_tf.models.registry import get_model
from aad_tf.models.registry import get_spec
from aad_tf.models.registry import register_model
from aad_tf.models import lenet  # noqa: F401  (registers itself)
from aad_tf.models import resnet9  # noqa: F401
from aad_tf.models import imagenet  # noqa: F401
