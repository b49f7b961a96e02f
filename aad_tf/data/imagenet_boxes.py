"""ImageNet 2012 validation images with their bounding boxes, for `aad_tf.analysis`.

Nothing is downloaded: the files come from the user (the ILSVRC2012 validation images and the
validation bounding boxes, `ILSVRC2012_bbox_val_v3.tgz`, from image-net.org). Expected layout:

    <imagenet_dir>/
      val/              ILSVRC2012_val_00000001.JPEG, ... (flat, as in ILSVRC2012_img_val.tar)
      val_boxes/        ILSVRC2012_val_00000001.xml, ...  (Pascal-VOC XML, one per image, flat)
      synsets.txt       1000 lines; line i starts with the WordNet id of class i
                        ('n01440764' or 'n01440764 tench, Tinca tinca', as LOC_synset_mapping.txt)

Class i is the i-th line of synsets.txt; Keras and TF-Slim ImageNet classifiers use the sorted
WordNet ids (the order of LOC_synset_mapping.txt). Each XML names the image (`<filename>`, with or
without `.JPEG`), its `<size>` and one `<object>` per box with `<name>` (the WordNet id: every
box of a validation image has the image's class) and `<bndbox>` `xmin ymin xmax ymax`, which are
1-based inclusive pixel indices (the Pascal VOC convention): the box covers the continuous
rectangle [xmin - 1, xmax) x [ymin - 1, ymax).

Images are resized to the model's input size as a whole (no crop, so every box stays in the
image), bilinearly with antialiasing, into [0, 1]; boxes are scaled with them. The ground truth
of an image is the union of its boxes.
"""

import dataclasses
import os
from typing import Iterator, Sequence
from xml.etree import ElementTree

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Annotation:
  """One validation image's annotation.

  Attributes:
    image_path: the JPEG.
    label: class index.
    boxes: float64 [K, 4] (ymin, xmin, ymax, xmax) in continuous pixels of the original image.
    size: (height, width) of the original image, from the XML.
  """
  image_path: str
  label: int
  boxes: np.ndarray
  size: tuple[int, int]


def read_synsets(path: str) -> list[str]:
  """The WordNet ids of classes 0..N-1: the first word of each non-empty line."""
  with open(path) as f:
    wnids = [line.split()[0] for line in f if line.strip()]
  if len(set(wnids)) != len(wnids):
    raise ValueError(f'{path}: repeated WordNet ids.')
  return wnids


def parse_annotation(xml_path: str, images_dir: str, class_index: dict) -> Annotation:
  """Parses one Pascal-VOC XML file.

  Raises:
    ValueError: a malformed file, an unknown class, or objects of different classes.
  """
  try:
    root = ElementTree.parse(xml_path).getroot()
  except ElementTree.ParseError as e:
    raise ValueError(f'{xml_path}: not valid XML ({e}).') from e

  def number(node, tag):
    child = node.find(tag)
    if child is None or child.text is None:
      raise ValueError(f'{xml_path}: missing <{tag}>.')
    return float(child.text)

  filename = (root.findtext('filename') or '').strip()
  if not filename:
    raise ValueError(f'{xml_path}: missing <filename>.')
  if not filename.lower().endswith(('.jpeg', '.jpg')):
    filename += '.JPEG'
  size = root.find('size')
  if size is None:
    raise ValueError(f'{xml_path}: missing <size>.')
  height, width = int(number(size, 'height')), int(number(size, 'width'))
  names, boxes = set(), []
  for obj in root.findall('object'):
    names.add((obj.findtext('name') or '').strip())
    box = obj.find('bndbox')
    if box is None:
      raise ValueError(f'{xml_path}: an <object> without <bndbox>.')
    xmin, ymin, xmax, ymax = (number(box, t) for t in ('xmin', 'ymin', 'xmax', 'ymax'))
    boxes.append((ymin - 1.0, xmin - 1.0, ymax, xmax))
  if not boxes:
    raise ValueError(f'{xml_path}: no <object>.')
  if len(names) != 1:
    raise ValueError(f'{xml_path}: objects of several classes {sorted(names)}; a validation '
                     'image has one class.')
  wnid = names.pop()
  if wnid not in class_index:
    raise ValueError(f'{xml_path}: class {wnid!r} is not in the synsets file.')
  return Annotation(os.path.join(images_dir, filename), class_index[wnid],
                    np.array(boxes, np.float64), (height, width))


def read_annotations(imagenet_dir: str, *, num_examples: int | None = None,
                     images_dir: str | None = None, boxes_dir: str | None = None,
                     synsets_file: str | None = None) -> list[Annotation]:
  """The annotations of the first `num_examples` validation images (sorted by file name).

  Args:
    imagenet_dir: the directory of the layout above.
    num_examples: how many (None: all).
    images_dir, boxes_dir, synsets_file: override `val/`, `val_boxes/`, `synsets.txt`.
  """
  images_dir = images_dir or os.path.join(imagenet_dir, 'val')
  boxes_dir = boxes_dir or os.path.join(imagenet_dir, 'val_boxes')
  synsets_file = synsets_file or os.path.join(imagenet_dir, 'synsets.txt')
  for path, what in ((images_dir, 'the validation JPEGs'), (boxes_dir, 'the box XML files')):
    if not os.path.isdir(path):
      raise FileNotFoundError(f'{path} (for {what}) not found; see '
                              'aad_tf/data/imagenet_boxes.py for the expected layout.')
  if not os.path.isfile(synsets_file):
    raise FileNotFoundError(f'{synsets_file} (class i = line i) not found; see '
                            'aad_tf/data/imagenet_boxes.py.')
  class_index = {wnid: i for i, wnid in enumerate(read_synsets(synsets_file))}
  files = sorted(f for f in os.listdir(boxes_dir) if f.endswith('.xml'))
  if not files:
    raise FileNotFoundError(f'No .xml files in {boxes_dir}.')
  files = files[:num_examples]
  annotations = [parse_annotation(os.path.join(boxes_dir, f), images_dir, class_index)
                 for f in files]
  missing = [a.image_path for a in annotations if not os.path.isfile(a.image_path)]
  if missing:
    raise FileNotFoundError(f'{len(missing)} annotated images are missing, e.g. {missing[0]}.')
  return annotations


def batches(annotations: Sequence[Annotation], *, image_size: tuple[int, int], batch_size: int
            ) -> Iterator[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
  """Yields (x float32 [B, H, W, 3] in [0, 1], y int32 [B], B boxes [K, 4] in input pixels)."""
  height, width = (int(v) for v in image_size)
  paths = [a.image_path for a in annotations]

  def load(path):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    shape = tf.shape(image)[:2]
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (height, width),
                            method='bilinear', antialias=True)
    return tf.clip_by_value(image, 0.0, 1.0), shape

  images = tf.data.Dataset.from_tensor_slices(paths).map(
      load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
  start = 0
  for x, shapes in images.prefetch(2):
    chunk = annotations[start:start + len(x)]
    boxes = []
    for a, (h, w) in zip(chunk, shapes.numpy()):
      # Scale by the decoded size (the XML's <size> should agree with it).
      scale = np.array([height / h, width / w, height / h, width / w])
      boxes.append(a.boxes * scale)
    yield x.numpy(), np.array([a.label for a in chunk], np.int32), boxes
    start += len(x)
