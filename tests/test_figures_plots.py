"""Tests for aad_tf.figures.plots: map figures as PNG, the overlay, the cheap panel image."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from aad_tf import figures


from figure_models import ATTACK, images, tiny_classifier  # noqa: F401


def read_png(path_or_bytes):
  data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, 'rb').read()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  image = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
  assert image.std() > 10, 'the figure is blank'
  return image


def test_map_figures_are_png_images(tmp_path):
  classifier = tiny_classifier()
  x, y = images(3)
  panel = figures.PanelMaker(classifier, 'cam', ATTACK)(x, y)
  names = figures.class_names('mnist')
  image = read_png(figures.to_png(figures.panel_figure(panel, names, title='step 7')))
  assert image.shape[1] > image.shape[0] > 200  # 3 rows, one column per image
  other = figures.PanelMaker(tiny_classifier(1), 'cam', ATTACK)(x, y)
  path = figures.save_png(figures.comparison_figure({'a': panel, 'b': other}, names),
                          str(tmp_path / 'sub' / 'compare.png'))
  assert read_png(path).shape[0] > 200
  path = figures.save_png(figures.evolution_figure([(0, other), (5, panel)], names),
                          str(tmp_path / 'evolution.png'))
  assert read_png(path).shape[0] > 300
  with pytest.raises(ValueError, match='same images'):
    figures.comparison_figure({'a': panel, 'b': panel.take([0, 1])}, names)


def test_overlay_blends_jet_over_the_image():
  image = np.array([0.0, 1.0, 0.5], np.float32).reshape(1, 1, 3, 1)
  cam = np.array([1.0, 0.0, 0.5], np.float32).reshape(1, 1, 3)
  # matplotlib's jet: 1 -> dark red (0.5, 0, 0), 0 -> dark blue (0, 0, 0.5), 0.5 -> ~green.
  got = figures.overlay(image, cam)[0, 0]
  a = figures.OVERLAY_ALPHA
  np.testing.assert_allclose(got[0], a * np.array([0.5, 0.0, 0.0]), atol=1e-6)
  np.testing.assert_allclose(got[1], (1 - a) + a * np.array([0.0, 0.0, 0.5]), atol=1e-6)
  assert got[2, 1] > got[2, 0] and got[2, 1] > got[2, 2]


def test_panel_image_is_cheap_and_holds_the_enlarged_images():
  classifier = tiny_classifier()
  x, y = images(4)
  panel = figures.PanelMaker(classifier, 'cam', ATTACK)(x, y)
  started = time.time()
  image = figures.panel_image(panel, figures.class_names('mnist'), title='run - step 3', cell=56)
  assert time.time() - started < 20  # tens of ms on an idle core; generous for a loaded machine
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  # The first input, enlarged 2x (56 / 28), appears as an exact block of the mosaic.
  block = (np.repeat(np.repeat(x[0, ..., 0], 2, 0), 2, 1) * 255).astype(np.uint8)
  hits = np.argwhere(image[..., 0] == block[0, 0])
  found = any(np.array_equal(image[r:r + 56, c:c + 56, 0], block) for r, c in hits[:20000])
  assert found
  wider = figures.panel_image(panel.take([0, 1, 2, 3, 0, 1]), figures.class_names('mnist'),
                              cell=56)
  assert wider.shape[1] > image.shape[1] and wider.shape[0] < image.shape[0] + 1
