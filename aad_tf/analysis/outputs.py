"""The analysis's inputs and files for trainers.analyze: a pretrained model; analysis.json, .md,
records.npz and the figures (Figs. 1-3)."""

import inspect
import json
import os
from typing import Any, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf import models
from aad_tf.analysis import figures as analysis_figures
from aad_tf.analysis.loop import Analysis
from aad_tf.analysis.loop import AnalyzedModel
from aad_tf.analysis.loop import attack_rounds as run_attack_rounds
from aad_tf.analysis.report import to_json
from aad_tf.analysis.report import to_markdown


def load_pretrained(name: str, weights: str, input_shape, num_classes: int
                    ) -> AnalyzedModel:
  """A registered backbone with `weights`: a whole .keras model, or a weights file."""
  spec = models.get_spec(name)
  if weights.endswith('.keras'):
    classifier = keras.models.load_model(weights, safe_mode=True, compile=False)
  elif 'pretrained_weights' in inspect.signature(spec.builder).parameters:
    # ImageNet backbones load their own weights file (see aad_tf/models/imagenet.py).
    classifier = models.get_model(name, input_shape=input_shape, num_classes=num_classes,
                                  pretrained_weights=weights)
  else:
    classifier = models.get_model(name, input_shape=input_shape, num_classes=num_classes)
    classifier.load_weights(weights)
  logging.info('Loaded %s weights from %s.', name, weights)
  return AnalyzedModel(name, classifier, spec.gradcam_layer)


def write_analysis(result: Analysis, analyzed: Sequence[AnalyzedModel],
                   output_dir: str, *, settings: dict[str, Any],
                   class_names: Optional[Sequence[str]], attack_rounds: int) -> str:
  """Writes analysis.json, analysis.md, records.npz and the figures; returns the Markdown."""
  tf.io.gfile.makedirs(output_dir)
  written = write_analysis_figures(result, analyzed, output_dir, class_names,
                                   attack_rounds=attack_rounds)
  with open(os.path.join(output_dir, 'analysis.json'), 'w') as f:
    json.dump(to_json(result, settings), f, indent=2, default=str)
  markdown = to_markdown(result, figures=written, settings=settings)
  with open(os.path.join(output_dir, 'analysis.md'), 'w') as f:
    f.write(markdown)
  np.savez_compressed(os.path.join(output_dir, 'records.npz'),
                      **{f'{name}/{key}': value for name, records in result.records.items()
                         for key, value in records.items()})
  logging.info('Wrote %s.', output_dir)
  return markdown


def write_analysis_figures(result: Analysis, analyzed: Sequence[AnalyzedModel],
                           output_dir: str, class_names: Optional[Sequence[str]], *,
                           attack_rounds: int) -> list[str]:
  """Writes the figures (fig1_gradcam, fig2_rounds, fig_compare, fig3_lime); their file names."""
  written = []
  primary = analyzed[0]
  examples = result.examples
  if examples['flipped'] or examples['held']:
    fig = analysis_figures.attention_figure(examples, primary.name, class_names=class_names)
    written.append(analysis_figures.save(fig, os.path.join(output_dir, 'fig1_gradcam.png')))
    chosen = examples['flipped'][:2] + examples['held'][:1]
    images = np.stack([e['x'] for e in chosen])
    labels = np.array([e['label'] for e in chosen])
    rounds = run_attack_rounds(primary, images, labels, eps=result.config.eps,
                                    num_rounds=attack_rounds)
    fig = analysis_figures.rounds_figure(
        images, [e['boxes'] for e in chosen], labels, rounds, class_names=class_names,
        title=f'{primary.name}: Grad-CAM over Iter-StepLL rounds (eps {result.config.eps:.3g})')
    written.append(analysis_figures.save(fig, os.path.join(output_dir, 'fig2_rounds.png')))
    if len(analyzed) > 1:
      fig = analysis_figures.comparison_figure(examples, [m.name for m in analyzed],
                                               class_names=class_names)
      written.append(analysis_figures.save(fig, os.path.join(output_dir, 'fig_compare.png')))
  lime = result.lime_examples
  if lime['flipped'] or lime['held']:
    fig = analysis_figures.lime_figure(lime, result.config.lime_features[0],
                                       class_names=class_names)
    written.append(analysis_figures.save(fig, os.path.join(output_dir, 'fig3_lime.png')))
  return [os.path.basename(path) for path in written]
