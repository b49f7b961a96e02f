"""Export of the trained classifier (never the training wrapper) for TF Serving and Keras.

`export_saved_model` writes a SavedModel with two signatures, both taking
`images`: float32 [N, H, W, C]. Pixel values are expected in [0, 1]; values outside are clipped
to [0, 1] before the model sees them (the model was trained on that range only).

  serving_default -> logits [N, K] float32, probabilities [N, K] float32, classes [N] int64
  attention       -> the same plus `attention` [N, h, w] float32: the Grad-CAM map of the
                     predicted class, scaled into [0, 1] per image.

`export_keras` writes the classifier as a `.keras` file loadable with `safe_mode=True`.
"""

import os

import keras
import tensorflow as tf
from absl import logging

from aad_tf import gradcam as gradcam_lib


def export_saved_model(classifier: keras.Model, gradcam_layer: str, export_dir: str) -> str:
  """Writes the SavedModel for TF Serving to `export_dir` (e.g. `.../saved_model/1`)."""
  image_shape = tuple(classifier.input_shape[1:])
  if None in image_shape:
    raise ValueError(f'The classifier needs a fixed input shape to export, got {image_shape}.')
  features = gradcam_lib.FeatureModel(classifier, gradcam_layer)
  spec = [tf.TensorSpec([None, *image_shape], tf.float32, name='images')]

  def predict(images):
    logits = classifier(tf.clip_by_value(images, 0.0, 1.0), training=False)
    return {'logits': logits, 'probabilities': tf.nn.softmax(logits),
            'classes': tf.argmax(logits, axis=-1)}

  def attention(images):
    images = tf.clip_by_value(images, 0.0, 1.0)
    cam, logits = gradcam_lib.gradcam(features.fn(training=False), images)
    return {'logits': logits, 'probabilities': tf.nn.softmax(logits),
            'classes': tf.argmax(logits, axis=-1),
            'attention': gradcam_lib.normalize_cam(cam)}

  archive = keras.export.ExportArchive()
  archive.track(classifier)
  archive.add_endpoint('serving_default', predict, input_signature=spec)
  archive.add_endpoint('attention', attention, input_signature=spec)
  tmp = export_dir.rstrip('/') + '.tmp'
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  archive.write_out(tmp, verbose=False)
  if tf.io.gfile.exists(export_dir):
    tf.io.gfile.rmtree(export_dir)
  tf.io.gfile.rename(tmp, export_dir)
  logging.info('Exported SavedModel to %s.', export_dir)
  return export_dir


def export_keras(classifier: keras.Model, path: str) -> str:
  """Saves the classifier as a `.keras` archive (atomically)."""
  tmp = path + '.tmp.keras'
  classifier.save(tmp)
  os.replace(tmp, path)
  return path


def export_all(classifier: keras.Model, gradcam_layer: str, model_dir: str) -> str:
  """The run's standard export: `<model_dir>/export/saved_model` and `export/model.keras`."""
  export_root = os.path.join(model_dir, 'export')
  tf.io.gfile.makedirs(export_root)
  export_saved_model(classifier, gradcam_layer, os.path.join(export_root, 'saved_model'))
  export_keras(classifier, os.path.join(export_root, 'model.keras'))
  return export_root
