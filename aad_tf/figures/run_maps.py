"""A trained run's attention maps: its test images and Grad-CAM panels (trainers.visualize).

Not re-exported by `aad_tf.figures` (it opens runs: aad_tf.runs imports training, which imports
summaries, which imports figures): `from aad_tf.figures import run_maps`.
"""

import dataclasses
from typing import Optional

import keras
import numpy as np

from aad_tf import data as data_lib
from aad_tf import runs
from aad_tf import training
from aad_tf.figures.panels import AttentionPanel
from aad_tf.figures.panels import PanelMaker
from aad_tf.figures.panels import class_names
from aad_tf.figures.panels import pick_examples


class RunMaps:
  """A run's config, test images and Grad-CAM panels (clean and under its training attack).

  Args:
    run_dir: a trainers.main run (config.json read by runs.load_config).
    data_dir: where its data is; None: config.json's data_dir.
    eps, num_steps, step_size: overrides of the run's training attack for the maps (None keeps).
    explain: figures.EXPLAIN (aad_tf.figures), the class the maps explain.
  """

  def __init__(self, run_dir: str, *, data_dir: Optional[str] = None,
               eps: Optional[float] = None, num_steps: Optional[int] = None,
               step_size: Optional[float] = None, explain: str = 'label'):
    self.run_dir, self.explain = run_dir, explain
    self.config = runs.load_config(run_dir)
    self.arrays = data_lib.load_arrays(self.config.dataset,
                                       data_dir=data_dir or self.config.data_dir,
                                       source=self.config.data_source)
    self.names = class_names(self.config.dataset, self.config.info.num_classes)
    overrides = {'eps': eps, 'num_steps': num_steps, 'step_size': step_size}
    self.attack = dataclasses.replace(self.config.defense.attack,
                                      **{k: v for k, v in overrides.items() if v is not None})

  def examples(self, num: int) -> tuple[np.ndarray, np.ndarray]:
    """`num` test images [num, H, W, C] and labels [num], figures.pick_examples' choice."""
    x, y = self.arrays.split('test')
    index = pick_examples(y, num)
    return x[index], y[index]

  def maker(self, classifier: keras.Model, layer: str) -> PanelMaker:
    return PanelMaker(classifier, layer, self.attack, explain=self.explain,
                      seed=self.config.seed)

  def latest(self, num: int, *, source: str = 'auto'
             ) -> tuple[runs.LoadedRun, AttentionPanel]:
    """The panel of `num` test images with the run's weights (runs.load_classifier's rule)."""
    run = runs.load_classifier(self.run_dir, source=source)
    return run, self.maker(run.classifier, run.gradcam_layer)(*self.examples(num))

  def evolution(self, num: int, *, max_checkpoints: int, include_init: bool
                ) -> list[tuple[int, AttentionPanel]]:
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
