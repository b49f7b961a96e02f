"""What the binaries do around training a run and opening it: callbacks, evaluations, their files.

The library side of the thin binaries in trainers/ (each parses flags, builds a config and calls
these with plain arguments; nothing here reads FLAGS):

  * trainers.main: `summary_callback` and `overfit_guard` (the callbacks beside training.train)
    and `closing_evaluation` (eval.json and the eval/* TensorBoard scalars);
  * trainers.evaluate: `write_robustness` (robustness.json and robustness.md) with `versions`;
  * trainers.visualize: `RunMaps` (a run's test images and Grad-CAM panels, its latest weights
    by aad_tf/runs.py's rule or each kept checkpoint);
  * trainers.analyze: `load_pretrained`, `write_analysis` (analysis.json, analysis.md,
    records.npz and the figures).
"""

import dataclasses
import inspect
import json
import os
import platform
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aad_tf import analysis
from aad_tf.analysis import figures as analysis_figures
from aad_tf import data as data_lib
from aad_tf import evaluation
from aad_tf import files
from aad_tf import figures
from aad_tf import models
from aad_tf import overfitting
from aad_tf import runs
from aad_tf import summaries
from aad_tf import training


# ---------------------------------------------------------------------------------------------
# trainers.main: the callbacks beside training.train and the closing evaluation.

def summary_callback(config: training.TrainConfig, arrays: data_lib.Arrays, *, num_images: int,
                     image_every: int, diagnostic_examples: int) -> summaries.TrainSummaries:
  """TensorBoard scalars, hparams and an activation-map panel of fixed test images.

  Args:
    config: the run.
    arrays: its data (in memory; for a streamed dataset a sample of it).
    num_images: held-out test images in the activation-map panel (0: none).
    image_every: steps between panels.
    diagnostic_examples: training images of the aad/* diagnostics (0 or no AAD: off).
  """
  images = labels = diagnostic_images = diagnostic_labels = None
  if num_images:
    x_test, y_test = arrays.split('test')
    index = figures.pick_examples(y_test, min(num_images, len(y_test)))
    images, labels = x_test[index], y_test[index]
  if config.defense.aad and diagnostic_examples:
    # A fixed batch of training images (the first of the train split), so that successive
    # points of the aad/* curves differ by the weights only.
    x_train, y_train = arrays.split('train')
    diagnostic_images = x_train[:diagnostic_examples]
    diagnostic_labels = y_train[:diagnostic_examples]
  return summaries.TrainSummaries(
      summaries.log_dir(config.model_dir), scalar_every=config.log_every, images=images,
      labels=labels, class_names=figures.class_names(config.dataset, config.info.num_classes),
      image_every=image_every, hparams=config.to_json(),
      diagnostic_images=diagnostic_images, diagnostic_labels=diagnostic_labels)


def overfit_guard(config: training.TrainConfig, arrays: data_lib.Arrays, *, mode: str,
                  num_examples: int, every_steps: int, pgd_steps: int, min_pgd_drop: float,
                  batch_size: int, eval_examples: Optional[int]
                  ) -> Optional[overfitting.OverfitGuard]:
  """The catastrophic-overfitting guard on the last `num_examples` test images (None when off).

  Args:
    config: the run (its eval_eps is the guard's eps).
    arrays: its in-memory data.
    mode: overfitting.MODES ('off': no guard).
    num_examples, every_steps, pgd_steps, min_pgd_drop, batch_size: see OverfitGuard.
    eval_examples: the closing evaluation's first test examples (None: all), to warn when the
      guard's images overlap them.
  """
  if mode == 'off':
    return None
  x_test, y_test = arrays.split('test')
  x, y = overfitting.held_out(x_test, y_test, min(num_examples, len(x_test)))
  if (eval_examples or len(x_test)) + len(x) > len(x_test):
    logging.warning('The guard\'s held-out examples overlap the closing evaluation\'s.')
  return overfitting.OverfitGuard(
      x, y, eps=config.eval_eps, mode=mode, pgd_steps=pgd_steps, min_pgd_drop=min_pgd_drop,
      every_steps=every_steps, batch_size=batch_size,
      checkpoint_dir=os.path.join(config.model_dir, 'checkpoints'))


def closing_evaluation(model, config: training.TrainConfig, dataset: tf.data.Dataset,
                       attacks: Mapping[str, Any], *, train_wall_time: float,
                       guard: Optional[overfitting.OverfitGuard] = None,
                       writer: Optional[summaries.TrainSummaries] = None,
                       progress: bool = False) -> Tuple[evaluation.Report, str]:
  """Evaluates the trained classifier at config.eval_eps; writes eval.json and eval/* scalars.

  Args:
    model: the AADModel training.train returned.
    config: the run (eval_eps set).
    dataset: the test batches.
    attacks: evaluation.standard_attacks(...) of the closing evaluation.
    train_wall_time: seconds this invocation trained (recorded in eval.json).
    guard, writer: the run's overfitting guard and TensorBoard callback, whose summaries
      eval.json holds.
    progress: show a progress bar per attack.

  Returns:
    (the report, its Markdown table) for the binary to show.
  """
  classifier, layer = model.classifier, models.get_spec(config.model).gradcam_layer
  report = evaluation.evaluate(classifier, dataset, attacks, gradcam_layer=layer,
                               seed=config.seed, progress=progress)
  table = evaluation.format_table(report, row_name=os.path.basename(config.model_dir.rstrip('/')))
  path = os.path.join(config.model_dir, 'eval.json')
  step = int(model.optimizer.iterations.numpy())
  files.write_json(path, {
      'dataset': config.dataset, 'model': config.model, 'eps': config.eval_eps,
      'seed': config.seed, **report.to_json(),
      # This invocation only (a resumed run counts from its restart), tracing included;
      # final_step is the optimizer step the model was trained to.
      'train': {'final_step': step, 'wall_time_s': train_wall_time},
      'overfit_guard': guard.summary() if guard else None,
      'aad_diagnostics': writer.aad_summary() if writer else None})
  logging.info('Wrote the closing evaluation to %s.', path)
  summaries.write_eval_scalars(summaries.log_dir(config.model_dir), step,
                               report.to_json()['accuracy'])
  return report, table


# ---------------------------------------------------------------------------------------------
# trainers.evaluate: robustness.json and robustness.md.

def versions() -> Dict[str, Optional[str]]:
  """The versions of Python, TensorFlow, Keras, NumPy and this checkout's commit."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                            text=True, timeout=10).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    commit = None
  return {'python': platform.python_version(), 'tensorflow': tf.__version__,
          'keras': keras.__version__, 'numpy': np.__version__, 'aad_tf_commit': commit}


def write_robustness(output_dir: str, report: evaluation.Report, table: str, *, row_name: str,
                     dataset: str, model: str, source: str, eps: float, seed: int,
                     first_example: int, wall_time: float, settings: Mapping[str, Any]) -> None:
  """Writes robustness.json (the report, settings, versions) and robustness.md (the tables).

  Args:
    output_dir: created if needed.
    report: the suite's evaluation.Report (diagnostics included).
    table: evaluation.format_table(report, row_name=row_name).
    row_name: the evaluated model's name in the tables.
    dataset, model, source, eps, seed, first_example, wall_time: recorded as given.
    settings: the attack and diagnostic settings (recorded under 'settings').
  """
  tf.io.gfile.makedirs(output_dir)
  payload = {'dataset': dataset, 'model': model, 'source': source, 'eps': eps, 'seed': seed,
             'first_example': first_example, 'wall_time_s': wall_time, 'versions': versions(),
             'settings': dict(settings), **report.to_json()}
  files.write_json(os.path.join(output_dir, 'robustness.json'), payload)
  header = (f'# Robustness of {row_name}\n\n{dataset}, eps {eps:.4f}, '
            f'{report.num_examples} test examples, seed {seed}, {wall_time:.0f} s.\n'
            f'Accuracy (%) per attack; worst_case = correct under every attack.\n\n')
  with tf.io.gfile.GFile(os.path.join(output_dir, 'robustness.md'), 'w') as f:
    f.write(header + table + '\n')
  logging.info('Wrote %s/robustness.json and robustness.md.', output_dir)


# ---------------------------------------------------------------------------------------------
# trainers.visualize: a run's activation-map panels.

class RunMaps:
  """A run's config, test images and Grad-CAM panels (clean and under its training attack).

  Args:
    run_dir: a trainers.main run (config.json read by runs.load_config).
    data_dir: where its data is; None: config.json's data_dir.
    eps, num_steps, step_size: overrides of the run's training attack for the maps (None keeps).
    explain: figures.EXPLAIN, the class the maps explain.
  """

  def __init__(self, run_dir: str, *, data_dir: Optional[str] = None,
               eps: Optional[float] = None, num_steps: Optional[int] = None,
               step_size: Optional[float] = None, explain: str = 'label'):
    self.run_dir, self.explain = run_dir, explain
    self.config = runs.load_config(run_dir)
    self.arrays = data_lib.load_arrays(self.config.dataset,
                                       data_dir=data_dir or self.config.data_dir,
                                       source=self.config.data_source)
    self.names = figures.class_names(self.config.dataset, self.config.info.num_classes)
    overrides = {'eps': eps, 'num_steps': num_steps, 'step_size': step_size}
    self.attack = dataclasses.replace(self.config.defense.attack,
                                      **{k: v for k, v in overrides.items() if v is not None})

  def examples(self, num: int) -> Tuple[np.ndarray, np.ndarray]:
    """`num` test images [num, H, W, C] and labels [num], figures.pick_examples' choice."""
    x, y = self.arrays.split('test')
    index = figures.pick_examples(y, num)
    return x[index], y[index]

  def maker(self, classifier: keras.Model, layer: str) -> figures.PanelMaker:
    return figures.PanelMaker(classifier, layer, self.attack, explain=self.explain,
                              seed=self.config.seed)

  def latest(self, num: int, *, source: str = 'auto'
             ) -> Tuple[runs.LoadedRun, figures.AttentionPanel]:
    """The panel of `num` test images with the run's weights (runs.load_classifier's rule)."""
    run = runs.load_classifier(self.run_dir, source=source)
    return run, self.maker(run.classifier, run.gradcam_layer)(*self.examples(num))

  def evolution(self, num: int, *, max_checkpoints: int, include_init: bool
                ) -> List[Tuple[int, figures.AttentionPanel]]:
    """(step, panel) of `num` test images at (step 0 and) up to `max_checkpoints` checkpoints.

    Raises:
      ValueError: no checkpoint and no step 0.
    """
    kept = list(training.list_checkpoints(self.run_dir))
    if len(kept) > max_checkpoints:
      chosen = np.unique(np.linspace(0, len(kept) - 1, max_checkpoints).round().astype(int))
      kept = [kept[i] for i in chosen]
    # One classifier whose weights are swapped per checkpoint, so the maps are traced once.
    classifier, layer = training.initial_classifier(self.config)
    maker = self.maker(classifier, layer)
    x, y = self.examples(num)
    snapshots = []
    if include_init and (not kept or kept[0][0] > 0):
      snapshots.append((0, maker(x, y)))
    for step, path in kept:
      training.restore_classifier(self.config, path, classifier=classifier)
      snapshots.append((step, maker(x, y)))
    if not snapshots:
      raise ValueError(f'No checkpoint in {self.run_dir}/checkpoints.')
    return snapshots


# ---------------------------------------------------------------------------------------------
# trainers.analyze: a pretrained model, and the analysis files.

def load_pretrained(name: str, weights: str, input_shape, num_classes: int
                    ) -> analysis.AnalyzedModel:
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
  return analysis.AnalyzedModel(name, classifier, spec.gradcam_layer)


def write_analysis(result: analysis.Analysis, analyzed: Sequence[analysis.AnalyzedModel],
                   output_dir: str, *, settings: Dict[str, Any],
                   class_names: Optional[Sequence[str]], attack_rounds: int) -> str:
  """Writes analysis.json, analysis.md, records.npz and the figures; returns the Markdown."""
  tf.io.gfile.makedirs(output_dir)
  written = write_analysis_figures(result, analyzed, output_dir, class_names,
                                   attack_rounds=attack_rounds)
  with open(os.path.join(output_dir, 'analysis.json'), 'w') as f:
    json.dump(analysis.to_json(result, settings), f, indent=2, default=str)
  markdown = analysis.to_markdown(result, figures=written, settings=settings)
  with open(os.path.join(output_dir, 'analysis.md'), 'w') as f:
    f.write(markdown)
  np.savez_compressed(os.path.join(output_dir, 'records.npz'),
                      **{f'{name}/{key}': value for name, records in result.records.items()
                         for key, value in records.items()})
  logging.info('Wrote %s.', output_dir)
  return markdown


def write_analysis_figures(result: analysis.Analysis, analyzed: Sequence[analysis.AnalyzedModel],
                           output_dir: str, class_names: Optional[Sequence[str]], *,
                           attack_rounds: int) -> List[str]:
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
    rounds = analysis.attack_rounds(primary, images, labels, eps=result.config.eps,
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
