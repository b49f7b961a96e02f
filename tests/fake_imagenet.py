"""A tiny stand-in for the ImageNet manual download (not a test module itself).

`write_manual_dir` writes ILSVRC2012_img_train.tar (one inner tar per synset, as image-net.org
ships it) and ILSVRC2012_img_val.tar with a few random JPEGs, so that TFDS can prepare
`imagenet2012` from them offline, exactly as from the real files.
"""

import io
import os
import tarfile

import numpy as np
import tensorflow as tf

SYNSETS = ('n01440764', 'n01443537')  # labels 0 and 1 of imagenet2012
PER_SYNSET = 3
NUM_VAL = 3  # ILSVRC2012_val_00000001..3: labels 65, 970, 230 in TFDS's validation labels


def _jpeg(seed: int, shape=(40, 56)) -> bytes:
  image = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
  return tf.io.encode_jpeg(image, quality=95).numpy()


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  archive.addfile(info, io.BytesIO(payload))


def write_manual_dir(directory: str) -> str:
  """Writes the two fake tar files into `directory`; returns it."""
  os.makedirs(directory, exist_ok=True)
  with tarfile.open(os.path.join(directory, 'ILSVRC2012_img_train.tar'), 'w') as outer:
    for s, synset in enumerate(SYNSETS):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as archive:
        for i in range(PER_SYNSET):
          _add(archive, f'{synset}_{i}.JPEG', _jpeg(10 * s + i))
      _add(outer, f'{synset}.tar', inner.getvalue())
  with tarfile.open(os.path.join(directory, 'ILSVRC2012_img_val.tar'), 'w') as archive:
    for i in range(1, NUM_VAL + 1):
      _add(archive, f'ILSVRC2012_val_{i:08d}.JPEG', _jpeg(100 + i, shape=(60, 44)))
  return directory
