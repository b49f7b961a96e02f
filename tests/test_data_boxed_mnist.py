"""Tests for aad_tf.data.boxed_mnist: exact boxes, clutter outside them, the registry entry."""

import dataclasses

import numpy as np
import pytest

from aad_tf import data as data_lib
from aad_tf.data import boxed_mnist


SMALL = boxed_mnist.CanvasConfig(canvas_size=32, min_digit_size=12, max_digit_size=20,
                                  min_fragments=2, max_fragments=3, min_fragment_size=5,
                                  max_fragment_size=8, noise=0.0)


@pytest.fixture(scope='module')
def mnist(shared_data_dir):
  return data_lib.load_arrays('mnist', data_dir=str(shared_data_dir))


def test_boxed_mnist_boxes_are_exact_and_clutter_stays_out(mnist):
  digits = mnist.x_test[:40]
  canvases, boxes = boxed_mnist.draw(digits, seed=3, config=SMALL)
  again, boxes_again = boxed_mnist.draw(digits, seed=3, config=SMALL)
  np.testing.assert_array_equal(canvases, again)  # Deterministic.
  np.testing.assert_array_equal(boxes, boxes_again)
  plain_config = dataclasses.replace(SMALL, min_fragments=0, max_fragments=0)
  plain, plain_boxes = boxed_mnist.draw(digits, seed=3, config=plain_config)
  np.testing.assert_array_equal(boxes, plain_boxes)  # Clutter does not move the digit.
  assert not np.array_equal(canvases, plain)
  for canvas, alone, (ymin, xmin, ymax, xmax) in zip(canvases[..., 0], plain[..., 0], boxes):
    # The box is the tight box of the digit's ink ...
    ink = alone > SMALL.ink_threshold * alone.max()
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == (ymin, xmin, ymax, xmax)
    # ... and clutter never enters it.
    np.testing.assert_array_equal(canvas[ymin:ymax, xmin:xmax], alone[ymin:ymax, xmin:xmax])
  assert canvases.dtype == np.float32 and canvases.min() >= 0 and canvases.max() <= 1


def test_box_dataset_and_registration(mnist):
  boxed = boxed_mnist.build(mnist, num_train=20, num_test=12, seed=1, config=SMALL)
  batches = list(boxed_mnist.box_dataset(boxed, batch_size=5))
  assert [len(b[0]) for b in batches] == [5, 5, 2]
  x, y, box = (np.concatenate([b[i] for b in batches]) for i in range(3))
  np.testing.assert_array_equal(x, boxed.arrays.x_test)
  np.testing.assert_array_equal(y, mnist.y_test[:12])
  np.testing.assert_array_equal(box, boxed.boxes('test'))
  info = data_lib.get_info('boxed_mnist')
  assert info.image_shape == (boxed_mnist.DEFAULT_CONFIG.canvas_size,) * 2 + (1,)
  assert (info.num_train, info.num_test) == (boxed_mnist.NUM_TRAIN, boxed_mnist.NUM_TEST)
