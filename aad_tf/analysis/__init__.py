"""The paper's Sec. 3 attention data analysis on images with ground-truth boxes (Tables 1-5).

For a classifier f with a Grad-CAM layer, and images x with label l and ground-truth boxes:

1. I_att: the correctly classified images. Each is attacked with StepLL (paper Eq. 4) at `eps`
   and falls in I_succeed (the prediction changes) or I_fail (it holds).
2. Table 1: the share of each subset and its mean IoU(Att(x), GT(x)) (Eq. 5). Att(x) = g(x) >=
   kappa with kappa per `kappa_mode`: 'equal_area' (the paper's Sec. 3.1: the image-specific kappa
   that makes Att and GT equally large, i.e. the top-|GT| cells), 'mean' (the per-image mean of
   g(x), the paper's default elsewhere) or 'fixed' (a fixed kappa on g(x) scaled by its maximum).
3. Table 2: among the images with IoU < 0.5, the share in each subset and the mean confidence
   (softmax probability of l on the clean image).
4. Table 3: the mean IoU(Att(x), Att(x_adv)) (Eq. 6), both keeping their top #cell grid cells.
5. Tables 4-5: Tables 1 and 3 again with LIME (Ribeiro et al. 2016) masks, the top n superpixels.

Geometry, one convention throughout:

* A box is (ymin, xmin, ymax, xmax) in continuous pixel coordinates of the model input: pixel
  (r, c) covers [r, r + 1) x [c, c + 1), so ymax and xmax are exclusive edges. An image may have
  several boxes; its ground truth is their union.
* Grad-CAM maps live on an analysis grid: the native [h, w] map of the Grad-CAM layer averaged
  over the cells of a g x g grid (`pool_cam`: area resampling; g = 8 is the 8x8 grid of the
  paper's InceptionV3 map), or the native grid itself (grid=None).
* The box is downsampled to that grid by cell coverage: GT(x) is the set of cells that the union
  of the boxes covers at least half (coverage computed exactly by `box_coverage`), and never
  empty (if no cell is half covered, the most covered one). IoU(Att, GT) and IoU(Att(x),
  Att(x_adv)) are then true intersection-over-union of cell sets on the same grid, whose cells all
  have the same area.
* LIME explains with superpixels, which are pixel sets, so Tables 4-5 are computed in pixels:
  Table 4 against the union of the boxes rasterised at pixel centres (`box_pixel_mask`), Table 5
  between the clean and adversarial LIME masks. Both explanations of an image use the clean
  image's superpixels, so the masks are unions of the same regions.

An all-zero Grad-CAM map (every weighted activation negative) has no attention area: its IoUs
are NaN, left out of the means, and counted in the report (`degenerate_maps`).

    models = [AnalyzedModel('raw', classifier, 'gradcam')]
    result = analyze(models, batches, AnalysisConfig(eps=0.1))   # batches: (x, y, boxes) tuples
    result.tables['raw']['table1']
    print(to_markdown(result))

Modules, lowest first:
  geometry.py  boxes, grid coverage, GT cells, IoU, attention (kappa), top cells
  lime_masks.py LIME superpixels, weights and masks (optional dependency)
  loop.py      AnalysisConfig, AnalyzedModel, analyze, attack_rounds, tables_from_records
  report.py    to_markdown / to_json, the tables in the paper's layout
  figures.py   Figs. 1-3 and the comparison figure (matplotlib)
`from aad_tf import analysis; analysis.<name>` gives their public names.
"""

from aad_tf.analysis.geometry import KAPPA_MODES
from aad_tf.analysis.geometry import iou
from aad_tf.analysis.geometry import box_coverage
from aad_tf.analysis.geometry import ground_truth_cells
from aad_tf.analysis.geometry import box_pixel_mask
from aad_tf.analysis.geometry import pool_cam
from aad_tf.analysis.geometry import attention
from aad_tf.analysis.geometry import top_cells

from aad_tf.analysis.lime_masks import SEGMENTATIONS
from aad_tf.analysis.lime_masks import LIME_INSTALL
from aad_tf.analysis.lime_masks import import_lime
from aad_tf.analysis.lime_masks import segment
from aad_tf.analysis.lime_masks import lime_weights
from aad_tf.analysis.lime_masks import lime_mask

from aad_tf.analysis.loop import ADV_CAM_LABELS
from aad_tf.analysis.loop import SUBSETS
from aad_tf.analysis.loop import Batch
from aad_tf.analysis.loop import AnalysisConfig
from aad_tf.analysis.loop import AnalyzedModel
from aad_tf.analysis.loop import attack_rounds
from aad_tf.analysis.loop import Analysis
from aad_tf.analysis.loop import analyze
from aad_tf.analysis.loop import tables_from_records

from aad_tf.analysis.report import format_tables
from aad_tf.analysis.report import format_comparison
from aad_tf.analysis.report import to_markdown
from aad_tf.analysis.report import to_json

from aad_tf.analysis import figures
from aad_tf.analysis.outputs import load_pretrained
from aad_tf.analysis.outputs import write_analysis
