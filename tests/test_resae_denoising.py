"""The residual AE and the denoising wrapper: shapes, normalizations, corruption, bad settings."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from convae_jax import config_checks, models

from conftest import tiny


def _create(**settings):
  return models.create_model(ml_collections.ConfigDict(settings))


@pytest.mark.parametrize('normalization', ['none', 'batch', 'group', 'layer'])
def test_resae_keeps_the_seed_latent_shape(normalization):
  model = _create(name='resae', normalization=normalization)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  assert model.apply(variables, images, False, method=model.encode).shape == (2, 8, 8, 32)
  output = model.apply(variables, images)
  assert output.reconstruction.shape == images.shape
  assert 0.0 <= float(output.reconstruction.min()) and float(output.reconstruction.max()) <= 1.0
  assert ('batch_stats' in variables) == (normalization == 'batch')


def test_resae_batch_norm_updates_its_statistics_in_training():
  model = _create(name='resae', normalization='batch', widths=(8, 8))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  _, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
                         updates['batch_stats'])
  assert all(jax.tree.leaves(changed))


def test_denoising_trains_against_clean_images():
  model = _create(name='denoising', base={'name': 'cae'}, noise='gaussian', noise_std=0.2)
  rngs = {'params': jax.random.key(0), 'noise': jax.random.key(1)}
  variables = model.init(rngs, jnp.zeros((1, 32, 32, 3)))
  images = jax.random.uniform(jax.random.key(2), (3, 32, 32, 3))
  noise_rng = {'noise': jax.random.key(5)}
  corrupted = model.apply(variables, images, rngs=noise_rng, method=model.corrupt)
  assert float(jnp.abs(corrupted - images).mean()) > 0.05
  output = model.apply(variables, images, rngs=noise_rng)
  # The same draw: reconstruct the corrupted images with the wrapped model, compare to clean.
  inner = _create(name='cae')
  expected = inner.apply({'params': variables['params']['inner']}, corrupted).reconstruction
  np.testing.assert_allclose(output.reconstruction, expected, atol=1e-6)
  np.testing.assert_allclose(output.losses['mse'],
                             jnp.mean(jnp.square(expected - images), axis=(1, 2, 3)), rtol=1e-5)


def test_mask_noise_hides_about_mask_prob_of_the_pixels():
  model = _create(name='denoising', base={'name': 'cae'}, noise='mask', mask_prob=0.3)
  variables = model.init({'params': jax.random.key(0), 'noise': jax.random.key(1)},
                         jnp.zeros((1, 32, 32, 3)))
  images = jnp.full((8, 32, 32, 3), 0.7)
  corrupted = model.apply(variables, images, rngs={'noise': jax.random.key(2)},
                          method=model.corrupt)
  hidden = np.asarray(corrupted[..., 0] == 0.0)
  assert abs(hidden.mean() - 0.3) < 0.03
  np.testing.assert_array_equal(corrupted[..., 1] == 0.0, hidden)  # All channels together.


@pytest.mark.parametrize('settings,message', [
    (dict(name='resae', normalization='instance'), r"resae: normalization='instance'; allowed"),
    (dict(name='resae', widths=()), r'resae: widths=\(\) must be one or more'),
    (dict(name='resae', blocks_per_stage=-1), 'resae: blocks_per_stage=-1 must be >= 0'),
    (dict(name='denoising', base={'name': 'vae'}), r"model.base.name='vae' is not a deterministic"),
    (dict(name='denoising', base={'name': 'denoising'}), 'is not a deterministic'),
    (dict(name='denoising', base={'name': 'cae'}, noise='salt'), "noise='salt'; allowed"),
    (dict(name='denoising', base={'name': 'cae'}, mask_prob=1.0), r'mask_prob=1.0 must lie in'),
    (dict(name='denoising', base={'name': 'cae'}, noise_std=-0.1), 'noise_std=-0.1 must be >= 0'),
    (dict(name='denoising', base={'name': 'cae', 'widths': (4,)}), 'has no setting widths'),
])
def test_bad_settings_are_refused(settings, message):
  from configs import cifar  # pylint: disable=g-import-not-at-top
  config = tiny(cifar.get_config())
  config.model = ml_collections.ConfigDict(settings)
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check(config, num_devices=1)
