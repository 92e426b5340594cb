"""A bottleneck defined only in this file combines with the `resnet` backbone by config and
trains through launch.py, with no edit anywhere else.

This file is both the test and the experiment config: `launch.py --config
tests/test_own_part.py` executes it, which defines and registers the 'test_tanh' bottleneck in
the launched process (a researcher's part file plus config works the same way).
"""
import json

import jax.numpy as jnp
import pytest

from configs import cifar
from convae_jax.models import base, parts


@parts.BOTTLENECKS.register('test_tanh')
class TanhBottleneck(parts.Bottleneck):
  """Latents bounded to (-1, 1), with a penalty on their magnitude."""
  weight: float = 1e-3

  def __post_init__(self):
    base.require("model.bottleneck 'test_tanh'", 'weight', self.weight, self.weight >= 0,
                 'be >= 0')
    super().__post_init__()

  def __call__(self, features, train, image_dims):
    del train, image_dims
    latents = jnp.tanh(features)
    magnitude = jnp.mean(jnp.abs(latents), axis=(1, 2, 3))
    return parts.BottleneckOutput(latents=latents, losses={'magnitude': self.weight * magnitude},
                                  metrics={'latent_abs': magnitude})


def get_config(arg=None):
  del arg
  config = cifar.get_config('resae')
  config.dataset = 'photo_patches'
  config.model.backbone.widths = (8, 16)
  config.model.bottleneck = {'name': 'test_tanh', 'weight': 1e-3}
  return config


@pytest.mark.slow
def test_own_bottleneck_trains_through_launch(tmp_path, photo_data_dir):
  from conftest import train_through_launch  # pylint: disable=g-import-not-at-top
  train_lines, final_eval = train_through_launch(
      'tests/test_own_part.py', tmp_path, photo_data_dir, '--config.model.bottleneck.weight=0.01',
      '--config.learning_rate=0.003')
  assert all('train/loss_magnitude' in l and 'train/latent_abs' in l for l in train_lines)
  assert train_lines[-1]['train/loss'] < train_lines[0]['train/loss']
  assert 'eval/latent_abs' in final_eval
  saved = json.load(open(tmp_path / 'config.json'))['model']
  assert saved['backbone']['name'] == 'resnet' and saved['bottleneck'] == {
      'name': 'test_tanh', 'weight': 0.01}
