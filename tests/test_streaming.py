"""The streaming input mode on the embedded photo_patches dataset (real TFRecord files)."""
import hashlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import tiny
from convae_jax import config_checks, data, input_pipeline, streaming, train

TRAIN = 'train[:20]'  # Small shares, so that a few steps cross epochs.


def _digests(images):
  return [hashlib.sha256(image.tobytes()).hexdigest() for image in images]


def _config(photo_data_dir, **overrides):
  from configs import photos  # pylint: disable=g-import-not-at-top
  return tiny(photos.get_config(), data_dir=photo_data_dir, input_mode='streaming',
              train_split=TRAIN, eval_split='test[:24]', shuffle_buffer=8, **overrides)


def test_a_run_resumed_mid_epoch_ends_bitwise_where_an_unstopped_one_does(photo_data_dir,
                                                                         tmp_path):
  # 20 images, batch 8: step 3 stops in the middle of the second epoch.
  straight = train.train_and_evaluate(_config(photo_data_dir, num_train_steps=6),
                                      str(tmp_path / 'straight'))
  train.train_and_evaluate(_config(photo_data_dir, num_train_steps=3), str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(_config(photo_data_dir, num_train_steps=6),
                                     str(tmp_path / 'resumed'))
  assert int(resumed.step) == int(straight.step) == 6
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_resumed_stream_gives_the_batches_an_unstopped_one_does(photo_data_dir):
  batches = lambda start: streaming.train_batches(
      'photo_patches', TRAIN, photo_data_dir, image_size=None, shuffle_buffer=8,
      global_batch_size=8, seed=3, start_step=start, num_local_devices=2)
  unstopped = batches(0)
  expected = [next(unstopped) for _ in range(7)]
  resumed = batches(3)
  for step in range(3, 7):
    np.testing.assert_array_equal(next(resumed), expected[step])
  assert expected[0].shape == (2, 4, 32, 32, 3)


def test_two_processes_read_disjoint_shares_and_together_see_every_image_of_an_epoch_once(
    photo_data_dir):
  builder = tfds.builder('photo_patches', data_dir=photo_data_dir)
  sizes = streaming.share_sizes(builder, TRAIN, 2)
  assert sizes == [10, 10]
  seen = []
  for process in range(2):
    stream = streaming.train_batches(
        'photo_patches', TRAIN, photo_data_dir, image_size=None, shuffle_buffer=8,
        global_batch_size=8, seed=0, start_step=0, num_local_devices=1,
        process_index=process, process_count=2)
    images = np.concatenate([next(stream)[0] for _ in range(5)])  # 2 epochs of its share.
    first, second = _digests(images[:10]), _digests(images[10:20])
    assert len(set(first)) == 10 and set(second) == set(first)  # Each image once an epoch,
    assert second != first  # in a new order.
    seen.append(set(first))
  assert not seen[0] & seen[1]
  everything = input_pipeline.load_split('photo_patches', TRAIN, photo_data_dir).images
  assert seen[0] | seen[1] == set(_digests(everything))


@pytest.mark.parametrize('process_count', [1, 2])
def test_evaluation_counts_each_image_once(photo_data_dir, process_count):
  # 21 images, global batch 8: neither the processes nor the batch divide them.
  split = 'test[:21]'
  per_process = [list(streaming.eval_batches(
      'photo_patches', split, photo_data_dir, image_size=None, image_shape=(32, 32, 3),
      global_batch_size=8, num_local_devices=2, process_index=i, process_count=process_count))
                 for i in range(process_count)]
  assert len({len(batches) for batches in per_process}) == 1  # Collectives line up.
  counted = [image for batches in per_process for images, mask in batches
             for image in images[mask]]
  assert all(images.shape == (2, 4 // process_count, 32, 32, 3)
             for batches in per_process for images, _ in batches)
  everything = input_pipeline.load_split('photo_patches', split, photo_data_dir).images
  assert sorted(_digests(counted)) == sorted(_digests(everything))


def test_auto_streams_a_dataset_over_the_memory_limit(cifar_config):
  info = input_pipeline.DatasetInfo(image_shape=(64, 64, 3),
                                    num_examples={'train': 100_000, 'test': 10_000})
  mode, why = data.choose_mode(cifar_config(in_memory_limit_mb=4096), info)
  assert mode == 'in_memory' and '1289 MiB' in why
  mode, why = data.choose_mode(cifar_config(in_memory_limit_mb=1000), info)
  assert mode == 'streaming' and 'over config.in_memory_limit_mb=1000' in why
  unknown = input_pipeline.DatasetInfo(image_shape=(32, 32, 3),
                                       num_examples={'train': None, 'test': None})
  assert data.choose_mode(cifar_config(), unknown)[0] == 'in_memory'
  with pytest.raises(data.InputModeError, match='set --config.input_mode=in_memory'):
    data.choose_mode(cifar_config(input_mode='streaming'), unknown)


def test_an_unknown_input_mode_is_refused(cifar_config):
  with pytest.raises(config_checks.ConfigError,
                     match=r"config.input_mode='stream': must be one of auto, in_memory, "
                           r'streaming'):
    config_checks.check(cifar_config(input_mode='stream'), 1)
