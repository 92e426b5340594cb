"""The residual AE and the denoising wrapper: shapes, normalizations, corruption, bad settings."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from convae_jax import config_checks, models

from conftest import tiny


def _create(**settings):
  return models.create_model(ml_collections.ConfigDict(settings))


@models.register('test_random_ae')
class _RandomAutoencoder(models.Autoencoder):
  """A test-only model whose output is random, which denoising must refuse to wrap."""
  rng_streams = ('sample',)
  deterministic = False


def _smooth_batch(n=8, size=32):
  """Smooth images: 8x8 uniform noise upsampled to size x size."""
  coarse = jax.random.uniform(jax.random.key(3), (n, 8, 8, 3))
  return jax.image.resize(coarse, (n, size, size, 3), 'linear')


def _loss_falls(model, images, steps=8, learning_rate=3e-3):
  """Runs a few Adam steps on one batch; returns the first and last losses."""
  streams = tuple(model.rng_streams)
  rngs = lambda i: {s: jax.random.fold_in(jax.random.key(10 + j), i) for j, s in enumerate(streams)}
  variables = model.init({'params': jax.random.key(0), **rngs(0)}, images[:1])
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  tx = optax.adam(learning_rate)

  @jax.jit
  def step(params, opt_state, state, i):
    def loss_fn(p):
      output, new_state = model.apply({'params': p, **state}, images, train=True, rngs=rngs(i),
                                      mutable=list(state))
      return sum(jnp.mean(t) for t in output.losses.values()), new_state
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, state, loss

  opt_state, losses = tx.init(params), []
  for i in range(steps):
    params, opt_state, state, loss = step(params, opt_state, state, i)
    losses.append(float(loss))
  return losses


@pytest.mark.parametrize('normalization', ['none', 'batch', 'group', 'layer'])
def test_resae_keeps_the_seed_latent_shape(normalization):
  # Shapes only (tracing, no compiling); the tests below run the numbers.
  model = _create(name='resae', normalization=normalization)
  assert model.num_downsamplings == 2
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3),
                                                                               jnp.float32))
  latents = jax.eval_shape(lambda v, x: model.apply(v, x, False, method=model.encode),
                           variables, images)
  assert latents.shape == (2, 8, 8, 32)
  output = jax.eval_shape(model.apply, variables, images)
  assert output.reconstruction.shape == images.shape
  assert output.losses['mse'].shape == (2,)
  assert set(variables) == ({'params', 'batch_stats'} if normalization == 'batch' else {'params'})


def test_resae_batch_norm_updates_its_statistics_in_training():
  model = _create(name='resae', normalization='batch', widths=(4,), latent_channels=2)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
  output, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  assert output.reconstruction.shape == images.shape
  assert 0.0 <= float(output.reconstruction.min()) and float(output.reconstruction.max()) <= 1.0
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
                         updates['batch_stats'])
  assert all(jax.tree.leaves(changed))


def test_resae_group_norm_takes_widths_that_8_does_not_divide():
  model = _create(name='resae', widths=(12, 7), latent_channels=4)
  latents = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 16, 16, 3)), False, method=model.encode)[0])
  assert latents.shape == (2, 4, 4, 4)


@pytest.mark.slow
def test_resae_loss_falls():
  model = _create(name='resae', widths=(8, 16), latent_channels=8, normalization='batch')
  losses = _loss_falls(model, _smooth_batch())
  assert losses[-1] < 0.8 * losses[0], losses


def test_denoising_trains_against_clean_images():
  model = _create(name='denoising', base={'name': 'cae'}, noise='gaussian', noise_std=0.2)
  assert model.rng_streams == ('noise',) and model.num_downsamplings == 2
  rngs = {'params': jax.random.key(0), 'noise': jax.random.key(1)}
  variables = model.init(rngs, jnp.zeros((1, 32, 32, 3)))
  images = jax.random.uniform(jax.random.key(2), (3, 32, 32, 3))
  noise_rng = {'noise': jax.random.key(5)}
  corrupted = model.apply(variables, images, rngs=noise_rng, method=model.corrupt)
  assert float(jnp.abs(corrupted - images).mean()) > 0.05
  assert 0.0 <= float(corrupted.min()) and float(corrupted.max()) <= 1.0
  output = model.apply(variables, images, rngs=noise_rng)
  # The same draw: reconstruct the corrupted images with the wrapped model, compare to clean.
  inner = _create(name='cae')
  expected = inner.apply({'params': variables['params']['inner']}, corrupted).reconstruction
  np.testing.assert_allclose(output.reconstruction, expected, atol=1e-6)
  np.testing.assert_allclose(output.losses['mse'],
                             jnp.mean(jnp.square(expected - images), axis=(1, 2, 3)), rtol=1e-5)
  # encode/decode are the wrapped model's, without corruption.
  latents = model.apply(variables, images, False, method=model.encode)
  np.testing.assert_allclose(latents, inner.apply({'params': variables['params']['inner']},
                                                  images, False, method=inner.encode), atol=1e-6)


@pytest.mark.slow
def test_denoising_keeps_the_wrapped_models_other_terms():
  model = _create(name='denoising', base={'name': 'vqvae', 'num_codes': 16, 'use_ema': True},
                  noise='mask')
  variables = model.init({'params': jax.random.key(0), 'noise': jax.random.key(1)},
                         jnp.zeros((1, 8, 8, 3)))
  images = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
  output, updates = model.apply(variables, images, train=True, rngs={'noise': jax.random.key(3)},
                                mutable=['vq_ema'])
  assert set(output.losses) == {'mse', 'commitment'} and 'perplexity' in output.metrics
  assert float(updates['vq_ema']['inner']['quantizer']['initialized']) == 1.0
  pictures = model.apply(variables, images, rngs={'noise': jax.random.key(3)},
                         method=model.pictures)
  assert set(pictures) == {'code_usage', 'corrupted_and_denoised'}
  assert pictures['corrupted_and_denoised'].shape == (2, 16, 8, 3)


def test_denoising_config_is_frozen_and_hashable():
  model = _create(name='denoising', base={'name': 'cae', 'features': [8, 16]})
  assert isinstance(model.base, ml_collections.FrozenConfigDict)
  assert model.base['features'] == (8, 16)
  twin = _create(name='denoising', base={'name': 'cae', 'features': [8, 16]})
  assert hash(model) == hash(twin) and model == twin  # So it can be a static jit argument.
  direct = models.get_model_class('denoising')(base={'name': 'cae'})
  assert direct.base['name'] == 'cae'


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
  np.testing.assert_array_equal(corrupted[~hidden], images[~hidden])


def test_denoising_loss_falls():
  model = _create(name='denoising', base={'name': 'cae'}, noise_std=0.05)
  losses = _loss_falls(model, _smooth_batch(), learning_rate=1e-2)  # The seed starts slowly.
  assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize('settings,message', [
    (dict(name='resae', normalization='instance'), r"resae: normalization='instance'; allowed"),
    (dict(name='resae', widths=()), r'resae: widths=\(\) must be one or more'),
    (dict(name='resae', widths=(16, 0)), r'resae: widths=\(16, 0\) must be one or more'),
    (dict(name='resae', blocks_per_stage=-1), 'resae: blocks_per_stage=-1 must be'),
    (dict(name='resae', latent_channels=0), 'resae: latent_channels=0 must be'),
    (dict(name='resae', activation='tanh'), "resae: activation='tanh'; allowed"),
    (dict(name='denoising', base={'name': 'vae'}), r"model.base.name='vae' is not a deterministic"),
    (dict(name='denoising', base={'name': 'test_random_ae'}), 'is not a deterministic'),
    (dict(name='denoising', base={'name': 'denoising'}), 'cannot wrap a denoising model'),
    (dict(name='denoising'), "set model.base to the wrapped model's config"),
    (dict(name='denoising', base={'features': (8,)}), "model.base has no 'name'"),
    (dict(name='denoising', base={'name': 'nope'}), "model.base: unknown model.name 'nope'"),
    (dict(name='denoising', base={'name': 'cae'}, noise='salt'), "noise='salt'; allowed"),
    (dict(name='denoising', base={'name': 'cae'}, mask_prob=1.0), r'mask_prob=1.0 must lie in'),
    (dict(name='denoising', base={'name': 'cae'}, noise_std=-0.1), 'noise_std=-0.1 must be >= 0'),
    (dict(name='denoising', base={'name': 'cae', 'widths': (4,)}), 'has no setting widths'),
    (dict(name='denoising', base={'name': 'resae', 'normalization': 'x'}),
     r"model.base: resae: normalization='x'"),
])
def test_bad_settings_are_refused(settings, message):
  from configs import cifar  # pylint: disable=g-import-not-at-top
  config = tiny(cifar.get_config())
  config.model = ml_collections.ConfigDict(settings)
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check(config, num_devices=1)
