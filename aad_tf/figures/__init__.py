"""Figures of where a classifier looks, clean and under attack, and of robustness sweeps.

Activation maps (paper Fig. 1, 6, 7, 9):

    maker = PanelMaker(classifier, 'gradcam', AttackConfig(eps=0.3, step_size=0.01, num_steps=40))
    panel = maker(x[:8], y[:8])                      # one compiled call: Grad-CAM clean + PGD
    save_png(panel_figure(panel, class_names('mnist')), 'maps.png')

  panel_figure       rows input / clean map / adversarial map, one column per image (also what
                     `aad_tf.summaries` writes to TensorBoard)
  comparison_figure  one row per image, (clean, adversarial) map columns per run (Fig. 7 / 9)
  evolution_figure   one image's clean and adversarial maps across checkpoints (Fig. 6)

Curves from JSON files written by evaluations:

  robustness_figure   accuracy vs eps, one panel per attack, one line per run
  sensitivity_figure  clean and adversarial accuracy vs alpha and vs beta (Fig. 8)

Accepted accuracy files (`read_accuracy`), accuracies as fractions in [0, 1]:

  eval.json        {"eps": 0.3, "accuracy": {"clean": 0.98, "fgsm": 0.95, "pgd20": 0.91, ...}}
  robustness.json  the same single-eps form, or a sweep, either
                   {"eps": [0.1, 0.2, 0.3], "accuracy": {"pgd20": [0.97, 0.95, 0.91], ...}}
                   or {"results": [{"eps": 0.1, "accuracy": {...}}, ...]}

Overlays are the Grad-CAM map of the explained class (the true label by default, as in the
training losses; or the prediction) scaled into [0, 1] per image, drawn with the 'jet' colormap at
45% opacity over the image. Text under each map: predicted class and its softmax confidence, green
when correct, red when wrong. Figures are built with the object-oriented matplotlib API on an Agg
canvas, so importing this module never changes pyplot's backend.

Modules, lowest first:
  panels.py  class names (from the dataset registry), pick_examples, AttentionPanel, PanelMaker:
             the Grad-CAM maps of clean and adversarial images (TensorFlow)
  plots.py   matplotlib: panel / comparison / evolution figures, overlay, PNG bytes and files
  curves.py  accuracy files of run directories (eval.json, robustness.json, config.json) and
             the robustness and sensitivity curves
`from aad_tf import figures; figures.<name>` gives their public names.
"""

from aad_tf.figures.panels import EXPLAIN
from aad_tf.figures.panels import class_names
from aad_tf.figures.panels import pick_examples
from aad_tf.figures.panels import AttentionPanel
from aad_tf.figures.panels import describe_attack
from aad_tf.figures.panels import PanelMaker

from aad_tf.figures.plots import OVERLAY_ALPHA
from aad_tf.figures.plots import CORRECT_COLOR
from aad_tf.figures.plots import WRONG_COLOR
from aad_tf.figures.plots import new_figure
from aad_tf.figures.plots import to_png
from aad_tf.figures.plots import save_png
from aad_tf.figures.plots import panel_figure
from aad_tf.figures.plots import overlay
from aad_tf.figures.plots import panel_image
from aad_tf.figures.plots import comparison_figure
from aad_tf.figures.plots import evolution_figure

from aad_tf.figures.curves import read_accuracy
from aad_tf.figures.curves import merge_accuracy
from aad_tf.figures.curves import robustness_figure
from aad_tf.figures.curves import SweepPoint
from aad_tf.figures.curves import sensitivity_figure
from aad_tf.figures.curves import sweep_point
from aad_tf.figures.curves import accuracy_file
