"""Packaging for aad-tf: the library (aad_tf), the binaries (trainers) and the flagfiles.

    pip install -c constraints.txt -e '.[test]'

install_requires holds compatible ranges, so that aad-tf installs beside other tools;
constraints.txt pins the exact versions it was tested with (the README's commands and .ci/run
install with it). The checkout's flags/*.cfg ship as the package data `trainers/flags/`, where
`--flagfile=NAME.cfg` finds them from any directory (trainers/flagfiles.py).
"""

import setuptools

setuptools.setup(
    name='aad-tf',
    version='0.1.0',
    description='AAD: adversarial training with Grad-CAM attention terms, in TF 2 / Keras 3.',
    packages=setuptools.find_packages(include=['aad_tf', 'aad_tf.*', 'trainers', 'trainers.*']) +
    ['trainers.flags'],
    package_dir={'trainers.flags': 'flags'},
    package_data={'trainers.flags': ['*.cfg']},
    python_requires='>=3.10',
    install_requires=[
        'tensorflow>=2.21,<2.22',
        'keras>=3.15.1,<3.16',
        'tensorboard>=2.21,<2.22',  # released with tensorflow, minor for minor
        'tensorflow-datasets>=4.9.10,<5',
        # tensorflow-datasets imports importlib_resources on every Python (lazily, in
        # core/dataset_builder.py) but declares it only for Python < 3.9, so its dataset builders
        # (the TFDS and ImageNet data paths) fail without this line.
        'importlib_resources>=6',
        'keras-cv>=0.9,<0.10',  # ResNet50 backbone (--resnet_source=keras_cv, the default)
        'absl-py>=2.1,<3',
        'numpy>=1.26,<3',
        'matplotlib>=3.8,<4',
    ],
    extras_require={
        # Every module the tests import (tests/test_analysis_*.py's LIME tests skip without the
        # analysis extra); pytest-xdist runs the suite on two processes (README, .ci/run).
        'test': ['pytest>=8,<10', 'pytest-xdist>=3.6,<4', 'pillow>=10,<14'],
        'analysis': ['lime>=0.2.0.1,<0.3', 'scikit-image>=0.22,<0.27'],
        # Peer libraries for cross-checks only (benchmarks/autoattack_vs_art.py and the slow
        # test in tests/test_attacks_autoattack.py); ART's AutoAttack imports multiprocess, which ART
        # does not declare.
        'peers': ['adversarial-robustness-toolbox>=1.20.1,<1.21', 'multiprocess>=0.70.19,<0.71'],
    },
    entry_points={
        'console_scripts': [
            'aad-train = trainers.main:run',
            'aad-evaluate = trainers.evaluate:run',
            'aad-export = trainers.export:run',
            'aad-visualize = trainers.visualize:run',
            'aad-analyze = trainers.analyze:run',
        ],
    },
)
