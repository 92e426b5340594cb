"""The embedded `photo_patches` dataset builds offline and keeps its splits apart."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from convae_jax.datasets import photo_patches


@pytest.fixture(scope='module')
def splits(tmp_path_factory):
  builder = tfds.builder('photo_patches', data_dir=str(tmp_path_factory.mktemp('tfds')))
  builder.download_and_prepare()
  names = builder.info.features['label'].names
  return names, {split: tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
                 for split in ('train', 'test')}


def test_shapes_and_dtypes(splits):
  _, data = splits
  for ds in data.values():
    assert len(ds['image']) > 0
    assert ds['image'].shape[1:] == (32, 32, 3) and ds['image'].dtype == np.uint8
    assert ds['label'].shape == ds['image'].shape[:1]
    assert ds['image'].reshape(len(ds['image']), -1).astype(np.float64).std(axis=1).min() >= 2


def test_splits_use_their_own_photos(splits):
  names, data = splits
  assert {names[l] for l in data['train']['label']} == set(photo_patches.TRAIN_PHOTOS)
  assert {names[l] for l in data['test']['label']} == set(photo_patches.TEST_PHOTOS)
  for ds in data.values():
    assert all(i.decode().startswith(names[l] + '_') for i, l in zip(ds['id'], ds['label']))


def test_no_test_patch_equals_a_train_patch(splits):
  _, data = splits
  train = {image.tobytes() for image in data['train']['image']}
  assert not any(image.tobytes() in train for image in data['test']['image'])


def test_grid_patches_skips_flat_patches():
  image = np.zeros((70, 100, 3), np.uint8)
  image[32:64, 64:96] = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
  patches = list(photo_patches.grid_patches(image))
  assert [(r, c) for r, c, _ in patches] == [(1, 2)]
  np.testing.assert_array_equal(patches[0][2], image[32:64, 64:96])
