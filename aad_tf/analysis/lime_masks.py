"""LIME (Ribeiro et al. 2016) explanations for Tables 4-5: superpixels, weights, masks.

lime is an optional dependency, imported lazily (`import_lime` says how to install it).
"""

import contextlib
from typing import Callable

import numpy as np


SEGMENTATIONS = ('quickshift', 'slic', 'grid')
LIME_INSTALL = "pip install lime==0.2.0.1 scikit-image==0.26.0   (or pip install -e '.[analysis]')"



def import_lime():
  """Returns `lime.lime_image`, or raises ImportError saying how to install it."""
  try:
    from lime import lime_image  # pylint: disable=g-import-not-at-top
    from lime.wrappers import scikit_image  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(f'Tables 4-5 need the `lime` package (and scikit-image): {LIME_INSTALL}. '
                      f'Or skip them with no LIME features (--lime_features=).') from e
  return lime_image


def segment(image: np.ndarray, method: str, *, num_segments: int = 64, grid: int = 8,
            seed: int = 0) -> np.ndarray:
  """Superpixels of one image [H, W, C] in [0, 1] as int labels 0..S-1, shape [H, W].

  'quickshift' is LIME's default (kernel 4, max_dist 200, ratio 0.2: made for photographs),
  'slic' asks skimage's SLIC for about `num_segments`, 'grid' cuts a grid x grid grid.
  """
  height, width = image.shape[:2]
  if method == 'grid':
    rows = np.minimum((np.arange(height) + 0.5) * grid // height, grid - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * grid // width, grid - 1).astype(int)
    return rows[:, None] * grid + cols[None, :]
  if method not in SEGMENTATIONS:
    raise ValueError(f'segmentation must be one of {SEGMENTATIONS}, got {method!r}.')
  import_lime()
  # pylint: disable-next=g-import-not-at-top
  from lime.wrappers.scikit_image import SegmentationAlgorithm
  rgb = _rgb(image)
  if method == 'quickshift':
    algorithm = SegmentationAlgorithm('quickshift', kernel_size=4, max_dist=200, ratio=0.2,
                                      random_seed=seed)
  else:
    algorithm = SegmentationAlgorithm('slic', n_segments=num_segments, compactness=10,
                                      start_label=0)
  labels = algorithm(rgb)
  return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def _rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float64)
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


@contextlib.contextmanager
def _quiet_lime(lime_image):
  # lime 0.2.0.1 wraps every explanation's sampling loop in a tqdm progress bar it cannot turn
  # off; hundreds of bars would bury the log.
  saved = lime_image.tqdm
  lime_image.tqdm = lambda iterable, *args, **kwargs: iterable
  try:
    yield
  finally:
    lime_image.tqdm = saved


def lime_weights(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, label: int,
                 segments: np.ndarray, *, num_samples: int, seed: int,
                 batch_size: int = 100) -> np.ndarray:
  """LIME's per-superpixel weights for class `label` of one image.

  Args:
    predict: images [N, H, W, 3] float64 -> class probabilities [N, classes].
    image: [H, W, C] in [0, 1].
    label: the explained class.
    segments: int [H, W] superpixel ids 0..S-1 (used as is, so that two images can share them).
    num_samples: LIME's neighbourhood size.
    seed: seeds LIME's sampling.

  Returns:
    float64 [S]: the local linear model's weight of each superpixel (hidden superpixels take
    their mean colour, LIME's default).
  """
  lime_image = import_lime()
  explainer = lime_image.LimeImageExplainer(random_state=int(seed) % (2**32))
  with _quiet_lime(lime_image):
    explanation = explainer.explain_instance(
        _rgb(image), predict, labels=(int(label),), top_labels=None, num_samples=num_samples,
        batch_size=batch_size, segmentation_fn=lambda _: segments, random_seed=int(seed) % 1000)
  weights = np.zeros(int(segments.max()) + 1)
  for feature, weight in explanation.local_exp[int(label)]:
    weights[feature] = weight
  return weights


def lime_mask(segments: np.ndarray, weights: np.ndarray, num_features: int) -> np.ndarray:
  """bool [H, W]: the union of the `num_features` superpixels of largest weight for the class."""
  order = np.argsort(-weights, kind='stable')[:num_features]
  return np.isin(segments, order)
