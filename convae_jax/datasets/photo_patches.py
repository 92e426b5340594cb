"""`photo_patches`: 32x32 patches of the colour photographs that ship inside scikit-image.

A small offline stand-in for CIFAR-10 (same image shape, no download). Patches come from a
non-overlapping grid; nearly constant ones (black borders, white background) are dropped.
The splits hold different photographs, so no test patch overlaps a train one.
"""
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

PATCH_SIZE = 32
MIN_STD = 2.0  # Pixel std below which a patch counts as constant (retina's black border).
TRAIN_PHOTOS = ('astronaut', 'immunohistochemistry', 'hubble_deep_field', 'retina',
                'colorwheel', 'chelsea')
# `skimage.data.cat()` is the same photograph as chelsea, so it is in neither split.
TEST_PHOTOS = ('coffee', 'rocket')

_CITATION = """\
@article{scikit-image,
  title = {scikit-image: image processing in {P}ython},
  author = {van der Walt, {S}t\\'efan and {S}ch\\"onberger, {J}ohannes {L}. and
            {Nunez-Iglesias}, {J}uan and {B}oulogne, {F}ran\\c{c}ois and {W}arner,
            {J}oshua {D}. and {Y}ager, {N}eil and {G}ouillart, {E}mmanuelle and {Y}u, {T}ony
            and the scikit-image contributors},
  journal = {PeerJ},
  volume = {2},
  pages = {e453},
  year = {2014},
  doi = {10.7717/peerj.453},
}
"""


def grid_patches(image: np.ndarray, patch_size: int = PATCH_SIZE,
                 min_std: float = MIN_STD) -> Iterator[tuple[int, int, np.ndarray]]:
  """Yields (row, col, patch) over a stride-`patch_size` grid, skipping flat patches."""
  rows, cols = image.shape[0] // patch_size, image.shape[1] // patch_size
  for r in range(rows):
    for c in range(cols):
      patch = image[r * patch_size:(r + 1) * patch_size, c * patch_size:(c + 1) * patch_size]
      if patch.astype(np.float64).std() >= min_std:
        yield r, c, np.ascontiguousarray(patch)


class PhotoPatches(tfds.core.GeneratorBasedBuilder):
  """32x32 patches of scikit-image's bundled colour photographs."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            f'{PATCH_SIZE}x{PATCH_SIZE} RGB patches cut on a non-overlapping grid from the '
            'colour photographs bundled with scikit-image (skimage.data), dropping nearly '
            f'constant patches (pixel std < {MIN_STD}). Train photos: '
            f'{", ".join(TRAIN_PHOTOS)}; test photos: {", ".join(TEST_PHOTOS)}. The label '
            'is the source photograph. Built offline, for smoke tests and small runs.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(PATCH_SIZE, PATCH_SIZE, 3), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=list(TRAIN_PHOTOS + TEST_PHOTOS)),
            'id': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-image.org/docs/stable/api/skimage.data.html',
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything ships inside the scikit-image wheel.
    return {
        'train': self._generate_examples(TRAIN_PHOTOS),
        'test': self._generate_examples(TEST_PHOTOS),
    }

  def _generate_examples(self, photos):
    # Imported here so that registering the builder doesn't load scikit-image.
    import skimage.data  # pylint: disable=g-import-not-at-top

    for name in photos:
      image = getattr(skimage.data, name)()
      if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f'skimage.data.{name}() is {image.dtype} {image.shape}, not uint8 RGB')
      for r, c, patch in grid_patches(image):
        key = f'{name}_{r:02d}_{c:02d}'
        yield key, {'image': patch, 'label': name, 'id': key}
