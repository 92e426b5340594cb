"""Input pipeline on fake CIFAR-10 (tfds.testing.mock_data): shapes, pixels, order, eval coverage."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from convae_jax import input_pipeline


@pytest.fixture(scope='module')
def fake_train_split():
  with tfds.testing.mock_data(num_examples=24):
    return input_pipeline.load_split('cifar10', 'train', None)


def _batches(split, start_step, count, **kwargs):
  options = dict(global_batch_size=8, seed=3, start_step=start_step, num_local_devices=4)
  options.update(kwargs)
  iterator = input_pipeline.train_batches(split, **options)
  return [next(iterator) for _ in range(count)]


def test_loads_uint8_images(fake_train_split):
  assert fake_train_split.images.shape == (24, 32, 32, 3)
  assert fake_train_split.images.dtype == np.uint8


def test_train_batches_are_the_split_pixels(fake_train_split):
  # uint8 as stored: the train step normalizes them on the device (tests/test_train.py).
  batch = _batches(fake_train_split, 0, 1)[0]
  assert batch.shape == (4, 2, 32, 32, 3) and batch.dtype == np.uint8
  assert len(set(_indices_of(fake_train_split, batch))) == 8


def _indices_of(split, batch):
  """Which train images a [devices, per-device, ...] batch holds."""
  flat = batch.reshape((-1,) + batch.shape[2:])
  return [int(np.flatnonzero((split.images == image).all(axis=(1, 2, 3)))[0]) for image in flat]


def test_each_epoch_is_a_seeded_permutation(fake_train_split):
  batches = _batches(fake_train_split, 0, 6)  # 2 epochs of 24 images.
  order = [i for b in batches for i in _indices_of(fake_train_split, b)]
  assert sorted(order[:24]) == list(range(24)) and sorted(order[24:]) == list(range(24))
  assert order[:24] != order[24:]  # Reshuffled every epoch.
  assert order[:24] != list(range(24))
  again = [i for b in _batches(fake_train_split, 0, 6) for i in _indices_of(fake_train_split, b)]
  assert again == order  # Same seed, same order.
  other = _batches(fake_train_split, 0, 3, seed=4)
  assert [i for b in other for i in _indices_of(fake_train_split, b)] != order[:24]


def test_the_order_is_the_epochs_orders_cut_into_batches(fake_train_split):
  # Runs depend on this order being kept: it is what a resumed or repeated run reads.
  batches = _batches(fake_train_split, 0, 5, global_batch_size=20)  # Batches span epochs.
  order = [i for b in batches for i in _indices_of(fake_train_split, b)]
  expected = np.concatenate([input_pipeline.epoch_order(24, 3, e) for e in range(5)])
  assert order == list(expected[:100])
  assert sorted(input_pipeline.epoch_order(24, 3, 0)) == list(range(24))


def test_start_step_continues_the_same_stream(fake_train_split):
  full = _batches(fake_train_split, 0, 7)
  resumed = _batches(fake_train_split, 4, 3)  # Starts mid-epoch 2.
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a, b)


def test_process_slices_make_up_the_global_batch(fake_train_split):
  whole = _batches(fake_train_split, 0, 2, num_local_devices=2)
  parts = [_batches(fake_train_split, 0, 2, num_local_devices=1, process_index=p,
                    process_count=2) for p in range(2)]
  for step in range(2):
    np.testing.assert_array_equal(whole[step].reshape(-1, 32, 32, 3),
                                  np.concatenate([parts[p][step][0] for p in range(2)]))


def test_eval_batches_cover_every_image_once():
  images = np.random.default_rng(0).integers(0, 256, (23, 4, 4, 3), dtype=np.uint8)
  split = input_pipeline.Split(images)
  seen, masks = [], []
  for batch, mask in input_pipeline.eval_batches(split, global_batch_size=8,
                                                 num_local_devices=4):
    assert batch.shape == (4, 2, 4, 4, 3) and batch.dtype == np.uint8 and mask.shape == (4, 2)
    seen.append(batch.reshape(-1, 4, 4, 3)[mask.ravel()])
    masks.append(mask)
  assert len(masks) == input_pipeline.num_eval_batches(split, 8) == 3
  assert sum(int(m.sum()) for m in masks) == 23
  np.testing.assert_array_equal(np.concatenate(seen), images)


def test_missing_cifar10_says_what_to_do(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, '_unreachable_hosts', lambda builder: ['www.cs.toronto.edu'])
  with pytest.raises(input_pipeline.DatasetUnavailableError,
                     match=r'(?s)import_cifar10 .*--data_dir .*configs/photos\.py'):
    input_pipeline.load_split('cifar10', 'train', str(tmp_path))
  assert not (tmp_path / 'cifar10').exists() or not any((tmp_path / 'cifar10').iterdir())
