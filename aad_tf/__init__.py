"""aad-tf: AAD, adversarial training with Grad-CAM attention terms, in TensorFlow 2 / Keras 3.

Modules are imported explicitly (e.g. `from aad_tf import data`); importing the package itself
is cheap and loads no TensorFlow.
"""

__version__ = '0.1.0'
