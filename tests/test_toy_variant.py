"""A variant defined only in this file trains through launch.py, with no edit anywhere else.

This file is both the test and the experiment config: `launch.py --config
tests/test_toy_variant.py` executes it, which defines and registers the 'toy' model in the
launched process (a researcher's variant file plus config works the same way).
"""
import json

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import pytest

from configs import cifar
from convae_jax.models import base, registry


@registry.register('toy')
class ToyAutoencoder(base.Autoencoder):
  """One strided conv down, one transposed conv up, and an extra loss term on the latent."""
  hidden: int = 8
  latent_weight: float = 1e-3

  num_downsamplings = 1

  def setup(self):
    self.down = nn.Conv(self.hidden, (2, 2), strides=(2, 2))
    self.up = nn.ConvTranspose(3, (2, 2), strides=(2, 2))

  def encode(self, images, train):
    return jnp.tanh(self.down(images))

  def decode(self, latents, train):
    return nn.sigmoid(self.up(latents))

  def __call__(self, images, *, train=False):
    latents = self.encode(images, train)
    reconstruction = self.decode(latents, train)
    latent_l2 = jnp.mean(jnp.square(latents), axis=(1, 2, 3))
    return base.AutoencoderOutput(
        reconstruction=reconstruction,
        losses={'mse': base.per_example_mse(reconstruction, images),
                'latent_l2': self.latent_weight * latent_l2},
        metrics={'latent_abs': jnp.mean(jnp.abs(latents), axis=(1, 2, 3))})


def get_config(arg=None):
  del arg
  config = cifar.get_config()
  config.dataset = 'photo_patches'
  config.model = ml_collections.ConfigDict({'name': 'toy', 'hidden': 8, 'latent_weight': 1e-3})
  return config


@pytest.mark.slow
def test_toy_variant_trains_through_launch(tmp_path, photo_data_dir):
  from conftest import train_through_launch  # pylint: disable=g-import-not-at-top
  train_lines, final_eval = train_through_launch(
      'tests/test_toy_variant.py', tmp_path, photo_data_dir, '--config.model.hidden=4',
      '--config.learning_rate=0.01')
  assert all('train/loss_latent_l2' in l and 'train/latent_abs' in l for l in train_lines)
  assert train_lines[-1]['train/loss'] < train_lines[0]['train/loss']
  assert 'eval/latent_abs' in final_eval
  assert json.load(open(tmp_path / 'config.json'))['model']['name'] == 'toy'
