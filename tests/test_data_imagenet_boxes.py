"""Tests for aad_tf.data.imagenet_boxes: Pascal-VOC box XML and the resized batches."""

import numpy as np
import pytest
import tensorflow as tf

from aad_tf import analysis
from aad_tf.data import imagenet_boxes


def test_imagenet_annotations(tmp_path):
  (tmp_path / 'val').mkdir()
  (tmp_path / 'val_boxes').mkdir()
  (tmp_path / 'synsets.txt').write_text('n01440764 tench\nn01443537 goldfish\n')
  image = np.zeros([40, 60, 3], np.uint8)
  image[10:20, 30:60] = 255
  (tmp_path / 'val' / 'ILSVRC2012_val_00000001.JPEG').write_bytes(
      tf.io.encode_jpeg(image, quality=100).numpy())
  (tmp_path / 'val_boxes' / 'ILSVRC2012_val_00000001.xml').write_text(
      '<annotation><filename>ILSVRC2012_val_00000001</filename>'
      '<size><width>60</width><height>40</height><depth>3</depth></size>'
      '<object><name>n01443537</name><bndbox><xmin>31</xmin><ymin>11</ymin><xmax>60</xmax>'
      '<ymax>20</ymax></bndbox></object>'
      '<object><name>n01443537</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax>'
      '<ymax>2</ymax></bndbox></object></annotation>')
  (annotation,) = imagenet_boxes.read_annotations(str(tmp_path))
  assert annotation.label == 1 and annotation.size == (40, 60)
  np.testing.assert_array_equal(annotation.boxes, [[10, 30, 20, 60], [0, 0, 2, 4]])
  (x, y, boxes), = list(imagenet_boxes.batches([annotation], image_size=(20, 30), batch_size=4))
  assert x.shape == (1, 20, 30, 3) and y.tolist() == [1]
  np.testing.assert_allclose(boxes[0], [[5, 15, 10, 30], [0, 0, 1, 2]])
  # The box lies on the white rectangle: the mean inside is high, outside it is low.
  mask = analysis.box_pixel_mask(boxes[0][:1], (20, 30))
  assert x[0][mask].mean() > 0.9 and x[0][~mask].mean() < 0.1
  with pytest.raises(FileNotFoundError, match='expected layout'):
    imagenet_boxes.read_annotations(str(tmp_path / 'missing'))
