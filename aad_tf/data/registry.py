"""The dataset registry: one entry per dataset holds every fact about it.

An entry (`DatasetInfo`) is what the rest of the package reads about a dataset: its image shape,
classes and their names, split sizes, TFDS name, the evaluation's default eps, the attention
analysis's defaults and the loader. Nothing else keeps a table of dataset facts.

    @register_dataset('toy', image_shape=(8, 8, 1), num_classes=3, num_train=60, num_test=30,
                      eval_eps=0.1, class_names=('a', 'b', 'c'))
    def load_toy(info, *, data_dir, source, download) -> arrays.Arrays:
      ...

    get_info('toy').eval_eps          # 0.1
    available_datasets()              # ('boxed_mnist', 'cifar10', 'imagenet', 'mnist', 'toy')

Loaders: an in-memory dataset's loader is `loader(info, *, data_dir, source, download)` and
returns `arrays.Arrays` (`arrays.load_arrays` calls it and validates the result); a streamed
dataset (`streamed=True`, ImageNet) has `loader(info, *, data_dir, manual_dir)` returning a
prepared TFDS builder (`imagenet.imagenet_builder`). The built-in entries are in `catalog.py`.
"""

import dataclasses
from typing import Callable

AUGMENTATIONS = (None, 'pad_crop_flip')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Everything about one registered dataset.

  Attributes:
    name: registry key, the `--dataset` value and config.json's `dataset`.
    image_shape: (H, W, C) of the images.
    num_classes: K; labels are class ids in [0, K).
    num_train: size of the standard training split.
    num_test: size of the standard test split.
    eval_eps: L-inf radius of the evaluation when none is given (trainers.main's closing
      evaluation, trainers.evaluate, the overfitting guard).
    class_names: K display names (figures, TensorBoard panels); () means the class ids as text.
    tfds_name: the TFDS dataset to read (or prepare) under data_dir; None: none.
    analysis_stepll_eps: StepLL's eps in the attention analysis (trainers.analyze) when --eps is
      unset; None: the dataset has no bounding boxes and cannot be analysed.
    analysis_segmentation: LIME's superpixel method in that analysis when unset.
    streamed: read as a stream of files (a TFDS builder), never held in memory.
    augmentations: the training augmentations it accepts (None: none).
    loader: how to get the data (see the module docstring).
    description: one line for docs.
  """
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_test: int
  eval_eps: float
  class_names: tuple[str, ...] = ()
  tfds_name: str | None = None
  analysis_stepll_eps: float | None = None
  analysis_segmentation: str | None = None
  streamed: bool = False
  augmentations: tuple[str | None, ...] = AUGMENTATIONS
  loader: Callable | None = dataclasses.field(default=None, compare=False, repr=False)
  description: str = ''

  def __post_init__(self):
    if len(self.image_shape) != 3 or min(self.image_shape) < 1:
      raise ValueError(f'{self.name}: image_shape must be (H, W, C), got {self.image_shape}.')
    if self.num_classes < 1 or self.num_train < 1 or self.num_test < 1:
      raise ValueError(f'{self.name}: num_classes, num_train and num_test must be positive.')
    if not 0.0 <= self.eval_eps <= 1.0:
      raise ValueError(f'{self.name}: eval_eps must be in [0, 1], got {self.eval_eps}.')
    if self.class_names and len(self.class_names) != self.num_classes:
      raise ValueError(f'{self.name}: {len(self.class_names)} class names for '
                       f'{self.num_classes} classes.')
    object.__setattr__(self, 'image_shape', tuple(self.image_shape))
    object.__setattr__(self, 'class_names', tuple(self.class_names) or
                       tuple(str(i) for i in range(self.num_classes)))

  @property
  def analyzable(self) -> bool:
    """Whether it has bounding boxes for the attention analysis."""
    return self.analysis_stepll_eps is not None


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *, image_shape, num_classes: int, num_train: int, num_test: int,
                     eval_eps: float, **facts):
  """Decorator registering `loader` as dataset `name` with the facts of `DatasetInfo`."""
  def wrap(loader):
    if name in _REGISTRY:
      raise ValueError(f'Dataset {name!r} is already registered.')
    _REGISTRY[name] = DatasetInfo(name=name, image_shape=image_shape, num_classes=num_classes,
                                  num_train=num_train, num_test=num_test, eval_eps=eval_eps,
                                  loader=loader, **facts)
    return loader
  return wrap


def unregister_dataset(name: str) -> None:
  """Removes dataset `name` (tests that register a toy dataset)."""
  get_info(name)
  del _REGISTRY[name]


def available_datasets() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def get_info(name: str) -> DatasetInfo:
  """Returns the DatasetInfo of `name`; ValueError for an unknown name."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f'Unknown dataset {name!r}; valid names: {sorted(_REGISTRY)}') from None
