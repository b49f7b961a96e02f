"""The built-in datasets, one registry entry each (see registry.py; WORKSPACE.md: add a dataset).

eval_eps is the evaluation's L-inf budget (the paper's: 0.3 MNIST, 8/255 CIFAR-10, 16/255
ImageNet; boxed MNIST is MNIST digits, so 0.3). analysis_stepll_eps is a different quantity, the
StepLL budget of the Sec. 3 attention analysis (trainers.analyze): ImageNet 16/255, the paper's
ImageNet budget (Sec. 5.1) and Tramer et al.'s StepLL setting; boxed MNIST 0.1, a third of the
MNIST budget, at which StepLL flips part of an undefended LeNet's I_att and not all of it, so both
subsets have members. analysis_segmentation is LIME's superpixel method there: LIME's own
quickshift for photographs; on 64x64 digit canvases quickshift makes about 4 superpixels, so SLIC
(about 64).
"""

from aad_tf.data import arrays
from aad_tf.data import boxed_mnist
from aad_tf.data import imagenet
from aad_tf.data.registry import register_dataset

DIGITS = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck')

register_dataset(
    'mnist', image_shape=(28, 28, 1), num_classes=10, num_train=60000, num_test=10000,
    eval_eps=0.3, class_names=DIGITS, tfds_name='mnist',
    description='MNIST digits (LeCun et al. 1998), mnist.npz or TFDS.')(arrays.load_local)

register_dataset(
    'cifar10', image_shape=(32, 32, 3), num_classes=10, num_train=50000, num_test=10000,
    eval_eps=8 / 255, class_names=CIFAR10_CLASSES, tfds_name='cifar10',
    description='CIFAR-10 (Krizhevsky 2009), cifar10.npz or TFDS.')(arrays.load_local)

# MNIST digits at known boxes on 64x64 cluttered canvases, drawn from mnist (boxed_mnist.py); for
# the attention analysis (aad_tf.analysis).
register_dataset(
    boxed_mnist.NAME, image_shape=(boxed_mnist.DEFAULT_CONFIG.canvas_size,) * 2 + (1,),
    num_classes=10, num_train=boxed_mnist.NUM_TRAIN, num_test=boxed_mnist.NUM_TEST,
    eval_eps=0.3, class_names=DIGITS, tfds_name='mnist', analysis_stepll_eps=0.1,
    analysis_segmentation='slic',
    description='MNIST digits at exact boxes on cluttered 64x64 canvases.')(
        boxed_mnist.load_arrays)


# ILSVRC 2012, streamed from a TFDS directory prepared from the manual download (see
# `imagenet.imagenet_builder`); never loaded into memory. Its test split is the 50000-image
# validation set. 1000 classes, named by their ids here (the WordNet names come with the data).
@register_dataset(
    'imagenet', image_shape=(224, 224, 3), num_classes=1000, num_train=1281167, num_test=50000,
    eval_eps=16 / 255, tfds_name='imagenet2012', analysis_stepll_eps=16 / 255,
    analysis_segmentation='quickshift', streamed=True,
    augmentations=imagenet.IMAGENET_AUGMENTATIONS,
    description='ILSVRC 2012, streamed from TFDS prepared offline from the manual download.')
def load_imagenet(info, *, data_dir=None, manual_dir=None):
  """The registry loader: the prepared TFDS builder (see `imagenet.imagenet_builder`)."""
  del info
  return imagenet.imagenet_builder(data_dir, manual_dir=manual_dir)
