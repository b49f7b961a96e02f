"""Adversarial training with AAD: the training model and the base defenses, one module a family.

Modules:
  base      AttackConfig, DefenseConfig, BaseDefense, `Hyperparameters` / `hyperparameter`, and
            the one registry (`register_defense`, `get_defense`, `BASE_DEFENSES`)
  model     AADModel (keras.Model whose train_step does adversarial training + AAD), LossTerms
  standard  none, madry, alp
  stepll    StepLL and R+Step-LL
  ensemble  ensemble adversarial training and its static models
  trades    TRADES

Importing the package imports every family module, each of which registers its defenses, so the
registry is complete whenever `aad_tf.defenses` is imported. A new base defense is one module
(see `base`'s docstring and WORKSPACE.md): import it here.
"""

from aad_tf.defenses import base
from aad_tf.defenses import model
from aad_tf.defenses import standard
from aad_tf.defenses import stepll  # after standard
from aad_tf.defenses import ensemble  # after stepll
from aad_tf.defenses import trades
from aad_tf.defenses.base import ATTENTION_MODES
from aad_tf.defenses.base import BASE_DEFENSES
from aad_tf.defenses.base import AttackConfig
from aad_tf.defenses.base import BaseDefense
from aad_tf.defenses.base import DefenseConfig
from aad_tf.defenses.base import Hyperparameters
from aad_tf.defenses.base import all_hyperparameters
from aad_tf.defenses.base import get_defense
from aad_tf.defenses.base import hyperparameter
from aad_tf.defenses.base import hyperparameter_fields
from aad_tf.defenses.base import metric_names
from aad_tf.defenses.base import register_defense
from aad_tf.defenses.base import unregister_defense
from aad_tf.defenses.ensemble import EnsembleDefense
from aad_tf.defenses.ensemble import StaticModel
from aad_tf.defenses.ensemble import check_static_model
from aad_tf.defenses.ensemble import load_static_model
from aad_tf.defenses.ensemble import load_static_models
from aad_tf.defenses.model import AADModel
from aad_tf.defenses.model import LossTerms
from aad_tf.defenses.model import SummarySpec
