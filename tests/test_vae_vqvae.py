"""VAE and VQ-VAE: the KL, the likelihood, gradients through sampling and quantization."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from convae_jax import config_checks, models
from convae_jax.models import vae, vqvae

from conftest import tiny


def _create(**settings):
  return models.create_model(ml_collections.ConfigDict(settings))


def test_kl_equals_the_analytic_value():
  mean = jnp.array([[1.0, 0.0, -2.0]])
  logvar = jnp.log(jnp.array([[1.0, 2.0, 0.5]]))
  # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2, summed.
  expected = sum(math.log(1 / math.sqrt(v)) + (v + m * m) / 2 - 0.5
                 for m, v in zip([1.0, 0.0, -2.0], [1.0, 2.0, 0.5]))
  np.testing.assert_allclose(vae.gaussian_kl(mean, logvar), [expected], rtol=1e-6)
  np.testing.assert_allclose(vae.gaussian_kl(jnp.zeros((2, 4, 4, 8)), jnp.zeros((2, 4, 4, 8))),
                             [0.0, 0.0])


@pytest.mark.parametrize('mean,log_scale', [(0.5, -3.0), (0.02, -1.0), (0.97, -5.0)])
def test_discretized_logistic_is_a_distribution_over_256_levels(mean, log_scale):
  levels = jnp.arange(256, dtype=jnp.float32).reshape(256, 1, 1, 1) / 255.0
  nll = vae.discretized_logistic_nll(levels, jnp.full_like(levels, mean), jnp.array(log_scale))
  np.testing.assert_allclose(float(jnp.sum(jnp.exp(-nll))), 1.0, atol=2e-3)


def _vae_and_variables(**settings):
  model = _create(name='vae', **settings)
  variables = model.init({'params': jax.random.key(0), 'sample': jax.random.key(1)},
                         jnp.zeros((1, 16, 16, 3)))
  images = jnp.round(jax.random.uniform(jax.random.key(2), (4, 16, 16, 3)) * 255) / 255
  return model, variables, images


@pytest.mark.slow
def test_gradients_flow_through_the_reparameterization():
  model, variables, images = _vae_and_variables(beta=0.0)  # Reconstruction term alone.

  def nll(params):
    output, _ = model.apply({**variables, 'params': params}, images, train=True,
                            rngs={'sample': jax.random.key(3)}, mutable=['counters'])
    return jnp.mean(output.losses['nll'])

  grads = jax.grad(nll)(variables['params'])['to_moments']['kernel']
  mean_grads, logvar_grads = jnp.split(grads, 2, axis=-1)
  # The log-variance only reaches the loss through the sample z = mean + std * eps.
  assert float(jnp.abs(logvar_grads).sum()) > 0.0
  assert float(jnp.abs(mean_grads).sum()) > 0.0


def test_kl_warmup_counts_training_steps():
  model, variables, images = _vae_and_variables(kl_warmup_steps=4)
  kl_weights = []
  for _ in range(6):
    output, updates = model.apply(variables, images, train=True,
                                  rngs={'sample': jax.random.key(3)}, mutable=['counters'])
    variables = {**variables, **updates}
    kl_weights.append(float(jnp.mean(output.losses['kl'] / output.metrics['kl'])) *
                      (16 * 16 * 3))
  np.testing.assert_allclose(kl_weights, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)


def test_vae_metrics_are_consistent():
  model, variables, images = _vae_and_variables()
  output = model.apply(variables, images, rngs={'sample': jax.random.key(3)})
  dims = 16 * 16 * 3
  np.testing.assert_allclose(output.metrics['bpd'], output.metrics['nelbo'] / (dims * np.log(2)),
                             rtol=1e-6)
  np.testing.assert_allclose(output.metrics['nelbo'],
                             (output.losses['nll'] + output.losses['kl']) * dims, rtol=1e-5)
  pictures = model.apply(variables, images, rngs={'sample': jax.random.key(4)},
                         method=model.pictures)
  assert pictures['prior_samples'].shape == (4, 16, 16, 3)
  assert pictures['interpolation'].shape == (2 * 8, 16, 16, 3)


@pytest.mark.parametrize('use_ema', [False, True])
def test_gradients_flow_through_the_straight_through_estimator(use_ema):
  model = _create(name='vqvae', num_codes=16, use_ema=use_ema)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  images = jax.random.uniform(jax.random.key(2), (4, 16, 16, 3))

  def mse(params):
    output, _ = model.apply({**variables, 'params': params}, images, train=True,
                            mutable=['vq_ema'] if use_ema else [])
    return jnp.mean(output.losses['mse'])

  grads = jax.grad(mse)(variables['params'])
  # The encoder only reaches the reconstruction through the quantizer's argmin.
  assert float(jnp.abs(grads['encoder']['conv1']['kernel']).sum()) > 0.0
  z = model.apply(variables, images, False, method=model.encode)
  z_q, codes, quantized = model.apply(variables, z, method=model.quantize)
  np.testing.assert_allclose(z_q, quantized, atol=1e-6)  # Forward: exactly the codes.
  assert codes.shape == (4, 4, 4) and int(codes.max()) < 16


def test_ema_codebook_moves_towards_assigned_vectors():
  quantizer = vqvae.VectorQuantizer(num_codes=4, code_dim=2, use_ema=True, ema_decay=0.5)
  z = jnp.array([[[3.0, 3.0]]])
  variables = quantizer.init(jax.random.key(0), z, False)
  codebook = lambda v: v['vq_ema']['embed_sum'] / (v['vq_ema']['cluster_size'][:, None])
  _, code, _ = quantizer.apply(variables, z, False)
  before = np.asarray(codebook(variables)[int(code.ravel()[0])])
  _, updates = quantizer.apply(variables, z, True, mutable=['vq_ema'])
  after = np.asarray(codebook(updates)[int(code.ravel()[0])])
  assert np.linalg.norm(after - 3.0) < np.linalg.norm(before - 3.0)


def test_vqvae_metrics_and_histogram():
  model = _create(name='vqvae', num_codes=8)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  images = jax.random.uniform(jax.random.key(2), (4, 16, 16, 3))
  output = model.apply(variables, images)
  assert set(output.losses) == {'mse', 'commitment', 'codebook'}
  perplexity, unused = float(output.metrics['perplexity'][0]), float(output.metrics['unused_codes'][0])
  assert 1.0 <= perplexity <= 8.0 and 0 <= unused <= 7
  histogram = model.apply(variables, images, method=model.pictures)['code_usage']
  assert histogram.shape == (1, 96, 8, 3)
  assert float(histogram.min()) >= 0.0 and float(histogram.max()) <= 1.0
  # latents() is what decode() maps to the evaluation reconstruction (inference relies on it).
  latents = model.apply(variables, images, method=model.latents)
  decoded = model.apply(variables, latents, False, method=model.decode)
  np.testing.assert_allclose(decoded, output.reconstruction, atol=1e-6)


@pytest.mark.parametrize('settings,message', [
    (dict(name='vqvae', num_codes=0), 'vqvae: num_codes=0 must be >= 1'),
    (dict(name='vqvae', commitment_cost=-1.0), 'vqvae: commitment_cost=-1.0 must be >= 0'),
    (dict(name='vqvae', ema_decay=1.0), r'vqvae: ema_decay=1.0 must lie in \(0, 1\)'),
    (dict(name='vae', beta=-0.5), 'vae: beta=-0.5 must be >= 0'),
    (dict(name='vae', kl_warmup_steps=-1), 'vae: kl_warmup_steps=-1 must be >= 0'),
])
def test_bad_variant_settings_are_refused(settings, message):
  from configs import cifar  # pylint: disable=g-import-not-at-top
  config = tiny(cifar.get_config())
  config.model = ml_collections.ConfigDict(settings)
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check(config, num_devices=1)


def test_ema_codebook_starts_from_encoder_outputs():
  quantizer = vqvae.VectorQuantizer(num_codes=4, code_dim=2, use_ema=True)
  z = jax.random.normal(jax.random.key(0), (2, 3, 3, 2)) * 10.0
  variables = quantizer.init(jax.random.key(1), z, False)
  assert float(variables['vq_ema']['initialized']) == 0.0
  _, updates = quantizer.apply(variables, z, True, mutable=['vq_ema'])
  assert float(updates['vq_ema']['initialized']) == 1.0
  # Before the EMA step each code was an encoder output; after it, it sits close to one.
  first_codes = np.asarray(z.reshape(-1, 2))[np.linspace(0, 17, 4).astype(int)]
  _, again = quantizer.apply({'vq_ema': {**updates['vq_ema']}}, z, True, mutable=['vq_ema'])
  assert float(again['vq_ema']['initialized']) == 1.0
  codebook = updates['vq_ema']['embed_sum'] / updates['vq_ema']['cluster_size'][:, None]
  distances = np.linalg.norm(np.asarray(codebook)[:, None] - first_codes[None], axis=-1)
  assert distances.min(axis=1).max() < 2.0  # vs. |z| ~ 14: data, not the tiny random init.
