"""Datasets: one registry entry per dataset -> in-memory arrays or a stream -> tf.data pipelines.

Modules, lowest first (none imports a later one):
  registry.py        DatasetInfo, register_dataset / get_info: every fact about a dataset
  arrays.py          Arrays / UnitImages (uint8 in memory, read as float32), npz / TFDS loading,
                     caching, DataNotFoundError; load_arrays calls the entry's loader
  pipelines.py       deterministic, resumable train_dataset / eval_dataset, pad_crop_flip
  imagenet.py        ImageNet 2012 streamed from TFDS prepared offline
  boxed_mnist.py     the boxed_mnist dataset: MNIST digits at exact boxes on cluttered canvases
  imagenet_boxes.py  ImageNet validation images + bounding-box XML, for the attention analysis
  catalog.py         the built-in registry entries (mnist, cifar10, boxed_mnist, imagenet)
  run_data.py        training_data(config): a run's data, in memory or streamed

`from aad_tf import data; data.<name>` gives the public names below.
"""

from aad_tf.data import registry
from aad_tf.data.registry import AUGMENTATIONS
from aad_tf.data.registry import DatasetInfo
from aad_tf.data.registry import available_datasets
from aad_tf.data.registry import get_info
from aad_tf.data.registry import register_dataset
from aad_tf.data.registry import unregister_dataset
from aad_tf.data import arrays
from aad_tf.data.arrays import Arrays
from aad_tf.data.arrays import DataNotFoundError
from aad_tf.data.arrays import NPZ_KEYS
from aad_tf.data.arrays import SOURCES
from aad_tf.data.arrays import SPLITS
from aad_tf.data.arrays import UnitImages
from aad_tf.data.arrays import clear_cache
from aad_tf.data.arrays import default_data_dir
from aad_tf.data.arrays import load_arrays
from aad_tf.data.arrays import load_local
from aad_tf.data.arrays import scale_to_unit
from aad_tf.data import pipelines
from aad_tf.data.pipelines import batch_indices
from aad_tf.data.pipelines import eval_dataset
from aad_tf.data.pipelines import pad_crop_flip
from aad_tf.data.pipelines import steps_per_epoch
from aad_tf.data.pipelines import train_dataset
from aad_tf.data import imagenet
from aad_tf.data.imagenet import IMAGENET_AUGMENTATIONS
from aad_tf.data.imagenet import IMAGENET_MANUAL_FILES
from aad_tf.data.imagenet import center_crop
from aad_tf.data.imagenet import imagenet_builder
from aad_tf.data.imagenet import imagenet_eval_dataset
from aad_tf.data.imagenet import imagenet_train_dataset
from aad_tf.data.imagenet import inception_crop_flip
from aad_tf.data import boxed_mnist
from aad_tf.data import imagenet_boxes
from aad_tf.data import catalog  # registers the built-in datasets
from aad_tf.data.run_data import TrainingData
from aad_tf.data.run_data import training_data
