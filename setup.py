"""Packaging for aad-tf: `pip install -e '.[test]'` installs the library, trainers and test deps."""

import setuptools

setuptools.setup(
    name='aad-tf',
    version='0.1.0',
    description='AAD: adversarial training with Grad-CAM attention terms, in TF 2 / Keras 3.',
    packages=setuptools.find_packages(include=['aad_tf', 'aad_tf.*', 'trainers', 'trainers.*']),
    python_requires='>=3.10',
    install_requires=[
        'tensorflow==2.21.0',
        'keras==3.15.1',
        'tensorflow-datasets==4.9.10',
        'importlib_resources==7.1.0',
        'keras-cv==0.9.0',
        'absl-py==2.5.1',
        'tensorboard==2.21.0',
        'numpy>=1.26,<3',
        'matplotlib==3.11.2',
    ],
    extras_require={
        'test': ['pytest==9.0.3'],
        'analysis': ['lime==0.2.0.1', 'scikit-image==0.26.0'],
        # Peer libraries for cross-checks only (benchmarks/autoattack_vs_art.py and the slow
        # test in tests/test_autoattack.py); ART's AutoAttack imports multiprocess, which ART
        # does not declare.
        'peers': ['adversarial-robustness-toolbox==1.20.1', 'multiprocess==0.70.19'],
    },
)
