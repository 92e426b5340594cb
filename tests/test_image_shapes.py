"""Shapes and channels from the dataset: grayscale, varied image sizes, resize and crop."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from conftest import REPO
from convae_jax import config_checks, input_pipeline, train

STEPS = 4


def _launch_on_mock_data(workdir, num_examples, config_file, *args):
  """launch.py's own entry point (main.run), in a fresh process, on tfds.testing.mock_data."""
  code = ('import sys, tensorflow_datasets as tfds\n'
          'from convae_jax import main\n'
          f'with tfds.testing.mock_data(num_examples={num_examples}):\n'
          '  main.run(sys.argv)\n')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, '-c', code, '--config', config_file, '--workdir', str(workdir), f'--config.num_train_steps={STEPS}',
       '--config.batch_size=8', '--config.eval_batch_size=8', '--config.log_every_steps=2',
       '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4',
       '--config.profile_num_steps=0', '--config.num_grid_images=4', *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_grayscale_dataset_trains_through_launch_with_one_channel_pictures(tmp_path):
  result = _launch_on_mock_data(tmp_path, 16, 'configs/mnist.py')
  assert result.returncode == 0, result.stderr[-3000:]
  assert '16 train / 16 eval images of shape (28, 28, 1)' in result.stderr
  with open(tmp_path / 'metrics.jsonl', encoding='utf-8') as f:
    evals = [line for line in map(json.loads, f) if 'eval/psnr' in line]
  assert evals[-1]['step'] == STEPS and np.isfinite(evals[-1]['eval/psnr'])
  picture = Image.open(tmp_path / 'images' / f'reconstructions_{STEPS}.png')
  assert picture.mode == 'L'  # One channel, saved as grayscale.
  with open(tmp_path / 'config.json', encoding='utf-8') as f:
    assert json.load(f)['model']['image_channels'] == 1


def test_the_model_builds_for_the_datasets_channels(cifar_config, tmp_path):
  """A 3-channel config on a grayscale dataset: the model takes and gives one channel."""
  config = cifar_config(dataset='mnist')
  assert config.model.image_channels == 3
  with tfds.testing.mock_data(num_examples=8):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert state.params['encoder']['conv1']['kernel'].shape[2] == 1  # One channel in,
  assert state.params['decoder']['deconv2']['kernel'].shape[3] == 1  # one channel out.
  with open(tmp_path / 'config.json', encoding='utf-8') as f:
    assert json.load(f)['model']['image_channels'] == 1


def _flowers(cifar_config, **overrides):
  """Mock tf_flowers (images of varied sizes), halved into train and eval splits."""
  return cifar_config(dataset='tf_flowers', train_split='train[:50%]', eval_split='train[50%:]',
                      **overrides)


@pytest.mark.parametrize('image_size, error, message', [
    (None, input_pipeline.ImageSizeError,
     r"dataset 'tf_flowers' has images of varied sizes; set --config.image_size=N"),
    (18, config_checks.ConfigError,
     r'images of 18x18 do not divide by 4, .*set --config.image_size to a multiple of 4')])
def test_image_sizes_that_cannot_train_are_refused_with_the_fix(cifar_config, tmp_path,
                                                               image_size, error, message):
  with tfds.testing.mock_data(num_examples=8):
    with pytest.raises(error, match=message):
      train.train_and_evaluate(_flowers(cifar_config, image_size=image_size), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_launch_refuses_varied_sizes_in_one_line_with_exit_code_2(tmp_path):
  result = _launch_on_mock_data(tmp_path / 'run', 8, 'configs/cifar.py',
                                '--config.dataset=tf_flowers', '--config.train_split=train',
                                '--config.eval_split=train')
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: dataset 'tf_flowers' has images of varied sizes; set --config.image_size=N to "
      'resize and centre-crop them to NxN')
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists() or not os.listdir(tmp_path / 'run')


def test_varied_image_sizes_train_with_image_size(cifar_config, tmp_path):
  with tfds.testing.mock_data(num_examples=8):
    sizes = {tuple(x['image'].shape) for x in tfds.as_numpy(
        tfds.load('tf_flowers', split='train').take(8))}
    assert len(sizes) > 1, sizes  # The mock images do vary in size.
    state = train.train_and_evaluate(_flowers(cifar_config, image_size=16), str(tmp_path))
  assert int(state.step) == 4
  assert os.path.exists(tmp_path / 'images' / 'reconstructions_4.png')


def test_resize_and_crop_keeps_the_centre_of_the_longer_side():
  # 20x40 (H x W): the shorter side 20 -> 16, so 40 -> 32, and the middle 16 columns stay.
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)
  out = input_pipeline.resized_and_cropped(tf.constant(image), 16).numpy()
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  whole = tf.image.resize(image, (16, 32), antialias=True).numpy()
  np.testing.assert_array_equal(out, np.clip(np.round(whole[:, 8:24]), 0, 255).astype(np.uint8))
  flat = np.full((30, 24, 1), 77, np.uint8)  # A flat image stays exactly flat.
  np.testing.assert_array_equal(input_pipeline.resized_and_cropped(tf.constant(flat), 8), 77)
