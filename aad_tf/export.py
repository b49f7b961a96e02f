"""Export of the trained classifier (never the training wrapper) for TF Serving and Keras.

`export_saved_model` writes a SavedModel with two signatures, both taking one input

  images: float32 [N, H, W, C] (H, W, C those of the classifier, e.g. 28, 28, 1 for MNIST)

  serving_default -> logits [N, K] float32, probabilities [N, K] float32 (softmax),
                     classes [N] int64 (argmax)
  attention       -> the same plus attention [N, h, w] float32: the Grad-CAM map of the predicted
                     class on the classifier's Grad-CAM grid (e.g. 14 x 14 for LeNet), scaled into
                     [0, 1] per image (all zeros when no cell is positive).

Inputs:
  * shape and dtype are fixed by the signatures, and the shape is checked again inside the graph,
    because a loaded SavedModel's signature function (and possibly a model server) passes a
    tensor of the wrong shape on to the graph without comparing it with the signature: a wrong
    shape fails with 'images must be float32 [N, 28, 28, 1] ...' instead of an error deep inside a
    convolution;
  * pixel values are expected in [0, 1] (scale 8-bit pixels by 1/255); values outside are clipped
    to [0, 1] before the classifier sees them, since it was trained on that range only;
  * NaN or Inf values are rejected with 'images must be finite'.

`export_keras` writes the classifier as a `.keras` file loadable with
`keras.models.load_model(path, safe_mode=True)` (no Lambda layers or pickled code).

Both export a float32 classifier whatever it was trained in: a classifier built under the
'mixed_bfloat16' policy is exported as its `precision.float32_copy` (same weights, every layer
float32), so a server or an evaluator sees float32 inputs, float32 compute and float32 logits.

The SavedModel is written next to its destination and renamed into place, so a model server
watching the parent directory (TF Serving's `<base>/<version>` layout) never sees half a model.
"""

import os
from typing import Callable, Dict, Tuple

import keras
import tensorflow as tf
from absl import logging

from aad_tf import defenses as defense_lib
from aad_tf import gradcam as gradcam_lib
from aad_tf import precision

INPUT_NAME = 'images'
SIGNATURES = ('serving_default', 'attention')


def image_shape_of(classifier: keras.Model) -> Tuple[int, int, int]:
  """The fixed (H, W, C) input shape of an exportable classifier; ValueError otherwise."""
  if isinstance(classifier, defense_lib.AADModel):
    raise ValueError('Export the classifier (AADModel.classifier), not the training wrapper.')
  try:
    shape = tuple(classifier.input_shape[1:])
  except AttributeError as e:  # subclassed models have no symbolic input
    raise ValueError(f'Only functional classifiers can be exported, got '
                     f'{type(classifier).__name__}.') from e
  if len(shape) != 3 or None in shape:
    raise ValueError(f'The classifier needs a fixed [H, W, C] input shape to export, got {shape}.')
  return shape


def serving_functions(classifier: keras.Model, gradcam_layer: str
                      ) -> Dict[str, Callable[[tf.Tensor], Dict[str, tf.Tensor]]]:
  """The two signature functions, images [N, H, W, C] -> dict of outputs (see module doc)."""
  image_shape = image_shape_of(classifier)
  features = gradcam_lib.FeatureModel(classifier, gradcam_layer)
  expected = ', '.join(['N'] + [str(d) for d in image_shape])

  def prepare(images):
    images = tf.convert_to_tensor(images)
    # Zero-padding the runtime shape compares any rank without a static shortcut: dims 1..4
    # must read (H, W, C, 0), i.e. rank 4 with the right image size.
    shape = tf.shape(images)
    padded = tf.concat([shape, tf.zeros([4], tf.int32)], axis=0)[1:5]
    check_shape = tf.debugging.Assert(
        tf.reduce_all(tf.equal(padded, tf.constant([*image_shape, 0], tf.int32))),
        [f'images must be float32 [{expected}] with values in [0, 1]; got shape', shape],
        summarize=8)
    with tf.control_dependencies([check_shape]):
      images = tf.debugging.assert_all_finite(images, 'images must be finite (no NaN or Inf)')
    return tf.clip_by_value(images, 0.0, 1.0)

  def outputs(logits):
    logits = tf.cast(logits, tf.float32)
    return {'logits': logits, 'probabilities': tf.nn.softmax(logits),
            'classes': tf.argmax(logits, axis=-1)}

  def predict(images):
    return outputs(classifier(prepare(images), training=False))

  def attention(images):
    cam, logits = gradcam_lib.gradcam(features.fn(training=False), prepare(images))
    return {**outputs(logits), 'attention': gradcam_lib.normalize_cam(cam)}

  return {'serving_default': predict, 'attention': attention}


def input_signature(classifier: keras.Model) -> tf.TensorSpec:
  return tf.TensorSpec([None, *image_shape_of(classifier)], tf.float32, name=INPUT_NAME)


def export_saved_model(classifier: keras.Model, gradcam_layer: str, export_dir: str) -> str:
  """Writes the SavedModel for TF Serving to `export_dir` (e.g. `.../saved_model/1`).

  Args:
    classifier: the functional classifier, images [N, H, W, C] in [0, 1] -> logits [N, K].
    gradcam_layer: the name of its Grad-CAM layer.
    export_dir: destination; replaced if it exists (the old one is renamed to
      `<export_dir>.old`, the new one renamed in, then the old one deleted).

  Returns:
    export_dir.
  """
  spec = input_signature(classifier)
  classifier = precision.float32_copy(classifier)
  archive = keras.export.ExportArchive()
  archive.track(classifier)
  for name, fn in serving_functions(classifier, gradcam_layer).items():
    archive.add_endpoint(name, fn, input_signature=[spec])
  export_dir = export_dir.rstrip('/')
  tmp = export_dir + '.tmp'
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  archive.write_out(tmp, verbose=False)
  if tf.io.gfile.exists(export_dir):
    # Rename the old version aside before renaming the new one in, so that there is never a
    # moment without a servable version at export_dir; then delete the old one.
    old = export_dir + '.old'
    if tf.io.gfile.exists(old):
      tf.io.gfile.rmtree(old)
    tf.io.gfile.rename(export_dir, old)
    tf.io.gfile.rename(tmp, export_dir)
    tf.io.gfile.rmtree(old)
  else:
    tf.io.gfile.rename(tmp, export_dir)
  logging.info('Exported SavedModel (signatures %s, input %s %s) to %s.', ', '.join(SIGNATURES),
               INPUT_NAME, spec.shape, export_dir)
  return export_dir


def export_keras(classifier: keras.Model, path: str) -> str:
  """Saves the classifier, computing in float32, as a `.keras` archive (atomically)."""
  image_shape_of(classifier)
  classifier = precision.float32_copy(classifier)
  if not path.endswith('.keras'):
    raise ValueError(f'A Keras archive path must end in .keras, got {path!r}.')
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  tmp = path + '.tmp.keras'
  classifier.save(tmp)
  os.replace(tmp, path)
  logging.info('Saved the classifier to %s.', path)
  return path


def export_all(classifier: keras.Model, gradcam_layer: str, model_dir: str) -> str:
  """The run's standard export: `<model_dir>/export/saved_model` and `export/model.keras`."""
  export_root = os.path.join(model_dir, 'export')
  tf.io.gfile.makedirs(export_root)
  classifier = precision.float32_copy(classifier)  # once for both files
  export_saved_model(classifier, gradcam_layer, os.path.join(export_root, 'saved_model'))
  export_keras(classifier, os.path.join(export_root, 'model.keras'))
  return export_root
