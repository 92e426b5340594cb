"""The parts: backbones, the Gaussian bottleneck, likelihoods and corruptions, and how the
`autoencoder` combines them."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar
from convae_jax import config_checks, models
from convae_jax.models.bottlenecks import gaussian, low_rank_prior
from convae_jax.models.likelihoods import discretized_logistic, logistic_mixture

from conftest import tiny


def _model(preset='cae', **parts):
  """The preset's model with some parts replaced, e.g. bottleneck={'name': 'gaussian'}."""
  config = cifar.model(preset)
  for kind, settings in parts.items():
    config[kind] = settings
  return models.create_model(config)


def _init(model, shape=(1, 16, 16, 3)):
  rngs = {s: jax.random.key(i + 1) for i, s in enumerate(model.rng_streams)}
  return model.init({'params': jax.random.key(0), **rngs}, jnp.zeros(shape))


def _rngs(model, seed=3):
  return {s: jax.random.key(seed + i) for i, s in enumerate(model.rng_streams)}


def _pixels(n=4, size=16):
  """Images on the 8-bit grid of [0, 1]."""
  return jnp.round(jax.random.uniform(jax.random.key(2), (n, size, size, 3)) * 255) / 255


@pytest.mark.parametrize('preset,params', [('cae', 7347), ('resae', 88259)])
def test_presets_keep_the_seed_and_residual_models(preset, params):
  model = _model(preset)
  variables = _init(model, (1, 32, 32, 3))
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == params
  # The parameter names of the earlier single-file models, so their checkpoints load.
  assert set(variables['params']) == {'encoder', 'decoder'}


@pytest.mark.parametrize('preset', cifar.VARIANTS)
def test_latents_decode_to_the_evaluation_reconstruction(preset):
  model = _model(preset)
  variables = _init(model)
  images = _pixels()
  output = model.apply(variables, images, rngs=_rngs(model))
  assert output.reconstruction.shape == images.shape
  assert all(v.shape == (4,) for v in {**output.losses, **output.metrics}.values())
  # inference encodes with latents() and decodes with decode(); for a corrupting model the
  # eval reconstruction is of a corrupted input, so compare on the clean path there.
  latents = model.apply(variables, images, method=model.latents, rngs=_rngs(model))
  decoded = model.apply(variables, latents, False, method=model.decode)
  if model.corruption['name'] == 'none':
    np.testing.assert_allclose(decoded, output.reconstruction, atol=1e-6)
  assert (output.codes is not None) == (model.num_codes > 0)


@pytest.mark.parametrize('normalization', ['none', 'batch', 'group', 'layer'])
def test_resnet_keeps_the_seed_latent_shape(normalization):
  # Shapes only (tracing, no compiling).
  model = _model('resae', backbone={'name': 'resnet', 'normalization': normalization})
  assert model.num_downsamplings == 2
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  latents = jax.eval_shape(lambda v, x: model.apply(v, x, False, method=model.encode),
                           variables, images)
  assert latents.shape == (2, 8, 8, 32)
  assert set(variables) == ({'params', 'batch_stats'} if normalization == 'batch' else {'params'})


def test_resnet_batch_norm_updates_its_statistics_in_training():
  model = _model(backbone={'name': 'resnet', 'normalization': 'batch', 'widths': (4,),
                           'latent_channels': 2})
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
  _, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
                         updates['batch_stats'])
  assert all(jax.tree.leaves(changed))


def test_resnet_group_norm_takes_widths_that_8_does_not_divide():
  model = _model(backbone={'name': 'resnet', 'widths': (12, 7), 'latent_channels': 4})
  latents = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 16, 16, 3)), False, method=model.encode)[0])
  assert latents.shape == (2, 4, 4, 4)


def test_kl_equals_the_analytic_value():
  mean = jnp.array([[1.0, 0.0, -2.0]])
  logvar = jnp.log(jnp.array([[1.0, 2.0, 0.5]]))
  # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2, summed.
  expected = sum(math.log(1 / math.sqrt(v)) + (v + m * m) / 2 - 0.5
                 for m, v in zip([1.0, 0.0, -2.0], [1.0, 2.0, 0.5]))
  np.testing.assert_allclose(gaussian.per_example_sum(gaussian.gaussian_kl(mean, logvar)),
                             [expected], rtol=1e-6)


def test_a_posterior_draws_log_ratio_is_log_q_minus_log_p():
  bottleneck = gaussian.Gaussian(latent_channels=3)
  features = jax.random.normal(jax.random.key(0), (2, 4, 4, 5))
  variables = bottleneck.init({'params': jax.random.key(1), 'sample': jax.random.key(2)},
                              features, False, 1)
  z, log_ratio = bottleneck.apply(variables, features, rngs={'sample': jax.random.key(3)},
                                  method='posterior_sample')
  mean, logvar = bottleneck.apply(variables, features, method='posterior')
  log_q = jax.scipy.stats.norm.logpdf(z, mean, jnp.exp(0.5 * logvar))
  log_p = jax.scipy.stats.norm.logpdf(z)
  np.testing.assert_allclose(log_ratio, gaussian.per_example_sum(log_q - log_p), rtol=1e-5)
  assert log_ratio.shape == (2,)


def _low_rank_prior(grid=(2, 2, 3), rank=2):
  """A LowRankGaussian with random parameters, and its dense covariance."""
  prior = low_rank_prior.LowRankGaussian(rank)
  variables = prior.init(jax.random.key(0), grid)
  keys = jax.random.split(jax.random.key(1), 3)
  params = {name: jax.random.normal(key, value.shape) * 0.5
            for key, (name, value) in zip(keys, variables['params'].items())}
  loc, log_diag, factor = (params[n] for n in ('loc', 'log_diag', 'factor'))
  return prior, {'params': params}, loc, jnp.diag(jnp.exp(log_diag)) + factor @ factor.T


def test_low_rank_prior_kl_and_density_equal_the_dense_gaussians():
  prior, variables, loc, covariance = _low_rank_prior()
  mean = jax.random.normal(jax.random.key(2), (3, 2, 2, 3))
  logvar = jax.random.normal(jax.random.key(3), (3, 2, 2, 3)) * 0.3
  kl = prior.apply(variables, mean, logvar, method='kl')
  precision = jnp.linalg.inv(covariance)
  for i in range(3):  # KL of two Gaussians, with the dense covariance and its inverse.
    m, v = mean[i].reshape(-1), jnp.exp(logvar[i].reshape(-1))
    expected = 0.5 * (jnp.trace(precision * v[None, :]) + (m - loc) @ precision @ (m - loc) -
                      m.size + jnp.linalg.slogdet(covariance)[1] - jnp.sum(jnp.log(v)))
    np.testing.assert_allclose(kl[i], expected, rtol=1e-4)
  np.testing.assert_allclose(
      prior.apply(variables, mean, method='log_prob'),
      jax.scipy.stats.multivariate_normal.logpdf(mean.reshape(3, -1), loc, covariance),
      rtol=1e-4)


def test_low_rank_prior_samples_have_its_covariance():
  prior, variables, loc, covariance = _low_rank_prior()
  z = prior.apply(variables, jax.random.key(4), (40000, 2, 2, 3), method='sample')
  assert z.shape == (40000, 2, 2, 3)
  flat = np.asarray(z).reshape(40000, -1)
  np.testing.assert_allclose(flat.mean(0), loc, atol=0.05)
  np.testing.assert_allclose(np.cov(flat, rowvar=False), covariance, atol=0.08)


def test_a_learned_prior_vaes_log_ratios_average_to_its_kl():
  model = _model('vae', bottleneck={'name': 'gaussian', 'prior': 'low_rank', 'prior_rank': 4})
  variables = _init(model)
  assert variables['params']['bottleneck_part']['learned_prior']['factor'].shape == (
      4 * 4 * 32, 4)
  images = _pixels(1)
  output = model.apply(variables, images, rngs=_rngs(model))
  # E over q of log q(z | x) - log p(z) is the KL; 2,000 draws put the mean within 1%.
  draws = jax.vmap(lambda key: model.apply(
      variables, images, rngs={'sample': key},
      method=lambda m, x: m.bottleneck_part.posterior_sample(m.features(x, False))[1]))(
          jax.random.split(jax.random.key(5), 2000))
  np.testing.assert_allclose(float(jnp.mean(draws)), float(output.metrics['kl'][0]), rtol=0.01)
  samples = model.apply(variables, 3, 16, 16, rngs=_rngs(model), method='sample')
  assert samples.shape == (3, 16, 16, 3)
  with pytest.raises(ValueError, match=r"its low-rank prior was learned on a latent grid of "
                                       r"512 values, not \(8, 8, 32\)"):
    model.apply(variables, 3, 32, 32, rngs=_rngs(model), method='sample')


@pytest.mark.parametrize('mean,log_scale', [(0.5, -3.0), (0.02, -1.0), (0.97, -5.0)])
def test_discretized_logistic_is_a_distribution_over_256_levels(mean, log_scale):
  levels = jnp.arange(256, dtype=jnp.float32).reshape(256, 1, 1, 1) / 255.0
  nll = discretized_logistic.discretized_logistic_nll(levels, jnp.full_like(levels, mean),
                                                      jnp.array(log_scale))
  np.testing.assert_allclose(float(jnp.sum(jnp.exp(-nll))), 1.0, atol=2e-3)


def test_discretized_logistic_known_case_by_hand():
  # x = 100/255, mean 0.4, scale e^-3: P = sigmoid((x - m + h) / s) - sigmoid((x - m - h) / s).
  x, m, s, h = 100 / 255, 0.4, math.exp(-3.0), 0.5 / 255
  sigmoid = lambda t: 1 / (1 + math.exp(-t))
  expected = -math.log(sigmoid((x - m + h) / s) - sigmoid((x - m - h) / s))
  # And the edge 0 takes the whole left tail: P = sigmoid((0 - m + h) / s).
  edge = -math.log(sigmoid((0 - m + h) / s))
  nll = discretized_logistic.discretized_logistic_nll(
      jnp.array([[x], [0.0]]), jnp.array([[m], [m]]), jnp.array(-3.0))
  np.testing.assert_allclose(nll, [expected, edge], rtol=1e-5)


def test_per_pixel_log_scale_doubles_the_decoder_outputs():
  model = _model('vae', likelihood={'name': 'discretized_logistic', 'log_scale': 'pixel'})
  variables = _init(model)
  assert variables['params']['decoder']['deconv2']['kernel'].shape[-1] == 6
  assert 'likelihood_part' not in variables['params']  # No per-channel parameter.
  output = model.apply(variables, _pixels(), rngs=_rngs(model))
  assert output.reconstruction.shape == (4, 16, 16, 3)
  assert np.all(np.isfinite(output.metrics['bpd']))


def _two_channel_grid():
  """Every colour of a 2-channel 8-bit pixel, as [65536, 1, 1, 2] images."""
  levels = jnp.arange(256, dtype=jnp.float32) / 255.0
  return jnp.stack(jnp.meshgrid(levels, levels, indexing='ij'), -1).reshape(-1, 1, 1, 2)


@pytest.mark.parametrize('coupling', [True, False])
def test_logistic_mixture_is_a_distribution_over_colours_with_its_mean(coupling):
  likelihood = logistic_mixture.LogisticMixture(num_components=3, channel_coupling=coupling)
  colours = _two_channel_grid()
  # Small outputs keep the components away from the edges, whose tails would move the mean.
  outputs = 0.5 * jax.random.normal(jax.random.key(0), (1, 1, 1, likelihood.decoder_channels(2)))
  _, nll = likelihood.apply({}, jnp.broadcast_to(outputs, colours.shape[:3] + outputs.shape[3:]),
                            colours)
  p = jnp.exp(-nll)
  np.testing.assert_allclose(float(jnp.sum(p)), 1.0, atol=1e-4)
  # The mean needs no image, also with coupling.
  expected = jnp.sum(p[:, None] * colours.reshape(-1, 2), axis=0)
  np.testing.assert_allclose(likelihood.apply({}, outputs, method='mean').reshape(2), expected,
                             atol=1e-3)


def test_logistic_mixture_couples_a_channel_to_the_earlier_ones_by_hand():
  # One component, two channels: x1's location is m1 + tanh(c) (x0 - m0).
  likelihood = logistic_mixture.LogisticMixture(num_components=1)
  raw_mean, raw_log_scale, raw_coefficient = jnp.array([0.3, -0.2]), jnp.array([0.5, 1.0]), 0.8
  outputs = jnp.concatenate([jnp.zeros(1), raw_mean, raw_log_scale,
                             jnp.array([raw_coefficient])]).reshape(1, 1, 1, 6)
  x = jnp.array([120.0, 40.0]).reshape(1, 1, 1, 2) / 255.0
  m, log_s = jax.nn.sigmoid(raw_mean), raw_log_scale - 3.0
  location1 = m[1] + math.tanh(raw_coefficient) * (x[..., 0] - m[0])
  expected = -(discretized_logistic.discretized_logistic_log_prob(x[..., 0], m[0], log_s[0]) +
               discretized_logistic.discretized_logistic_log_prob(x[..., 1], location1, log_s[1]))
  _, nll = likelihood.apply({}, outputs, x)
  np.testing.assert_allclose(nll, expected.reshape(1), rtol=1e-6)


def test_one_uncoupled_component_is_the_per_pixel_discretized_logistic():
  mixture = logistic_mixture.LogisticMixture(num_components=1, channel_coupling=False)
  single = discretized_logistic.DiscretizedLogistic(log_scale='pixel')
  outputs = jax.random.normal(jax.random.key(1), (2, 4, 4, 6))
  images = _pixels(2, 4)
  _, nll = mixture.apply({}, jnp.concatenate([jnp.zeros((2, 4, 4, 1)), outputs], -1), images)
  _, expected = single.apply({}, outputs, images)
  np.testing.assert_allclose(nll, expected, rtol=1e-6)


def test_logistic_mixture_sizes_the_decoder_and_reports_bits_per_dim():
  model = _model('vae', likelihood={'name': 'logistic_mixture', 'num_components': 4})
  variables = _init(model)
  assert variables['params']['decoder']['deconv2']['kernel'].shape[-1] == 4 * (1 + 6 + 3)
  output = model.apply(variables, _pixels(), rngs=_rngs(model))
  assert output.reconstruction.shape == (4, 16, 16, 3)
  assert np.all((output.reconstruction >= 0) & (output.reconstruction <= 1))
  assert np.all(np.isfinite(output.metrics['bpd']))


def test_gradients_flow_through_the_reparameterization():
  model = _model('vae', bottleneck={'name': 'gaussian', 'beta': 0.0})  # Reconstruction only.
  variables, images = _init(model), _pixels()

  def nll(params):
    output, _ = model.apply({**variables, 'params': params}, images, train=True,
                            rngs=_rngs(model), mutable=['counters'])
    return jnp.mean(output.losses['nll'])

  grads = jax.grad(nll)(variables['params'])['bottleneck_part']['to_moments']['kernel']
  mean_grads, logvar_grads = jnp.split(grads, 2, axis=-1)
  # The log-variance only reaches the loss through the sample z = mean + std * eps.
  assert float(jnp.abs(logvar_grads).sum()) > 0.0
  assert float(jnp.abs(mean_grads).sum()) > 0.0


def test_kl_warmup_counts_training_steps():
  model = _model('vae', bottleneck={'name': 'gaussian', 'kl_warmup_steps': 4})
  variables, images = _init(model), _pixels()
  weights = []
  for _ in range(6):
    output, updates = model.apply(variables, images, train=True, rngs=_rngs(model),
                                  mutable=['counters'])
    variables = {**variables, **updates}
    weights.append(float(jnp.mean(output.losses['kl'] / output.metrics['kl'])) * 16 * 16 * 3)
  np.testing.assert_allclose(weights, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)


def test_free_bits_floor_the_kl_term_only():
  free = 0.5
  model = _model('vae', bottleneck={'name': 'gaussian', 'free_bits': free, 'latent_channels': 4})
  plain = _model('vae', bottleneck={'name': 'gaussian', 'latent_channels': 4})
  variables, images = _init(model), _pixels()
  output = model.apply(variables, images, rngs=_rngs(model))
  reference = plain.apply(variables, images, rngs=_rngs(model))
  np.testing.assert_allclose(output.metrics['kl'], reference.metrics['kl'], rtol=1e-6)
  positions, dims = 4 * 4, 16 * 16 * 3
  # Each of the 4 channels contributes at least free_bits per position.
  assert np.all(output.losses['kl'] >= free * positions * 4 / dims - 1e-6)
  assert np.all(output.losses['kl'] >= reference.losses['kl'] - 1e-7)


def test_elbo_metrics_are_consistent():
  model = _model('vae', bottleneck={'name': 'gaussian'})  # No KL warm-up: beta = 1 at once.
  variables, images = _init(model), _pixels()
  output = model.apply(variables, images, rngs=_rngs(model))
  dims = 16 * 16 * 3
  np.testing.assert_allclose(output.metrics['bpd'], output.metrics['nelbo'] / (dims * np.log(2)),
                             rtol=1e-6)
  np.testing.assert_allclose(output.metrics['nelbo'],
                             (output.losses['nll'] + output.losses['kl']) * dims, rtol=1e-5)
  np.testing.assert_allclose(output.metrics['nll_bpd'],
                             output.losses['nll'] / np.log(2), rtol=1e-5)
  pictures = model.apply(variables, images, rngs=_rngs(model, 4), method=model.pictures)
  assert pictures['prior_samples'].shape == (4, 16, 16, 3)
  assert pictures['interpolation'].shape == (2 * 8, 16, 16, 3)


def test_discrete_bottlenecks_have_a_rate_of_log_codes_per_position():
  # A proper likelihood on a VQ or FSQ latent: a negative ELBO under a uniform code prior.
  model = _model('fsq-resnet', likelihood={'name': 'discretized_logistic'},
                 backbone={'name': 'seed'})
  variables, images = _init(model), _pixels()
  output = model.apply(variables, images)
  np.testing.assert_allclose(output.metrics['nelbo'] - output.metrics['nll_bpd'] * 16 * 16 * 3 *
                             np.log(2), 4 * 4 * np.log(512), rtol=1e-4)


def test_gaussian_corruption_trains_against_clean_images():
  model = _model('denoising', corruption={'name': 'gaussian', 'std': 0.2})
  assert model.rng_streams == ('noise',) and model.deterministic
  variables = _init(model, (1, 32, 32, 3))
  images = jax.random.uniform(jax.random.key(2), (3, 32, 32, 3))
  noise = {'noise': jax.random.key(5)}
  corrupted = model.apply(variables, images, rngs=noise, method=model.corrupt)
  assert float(jnp.abs(corrupted - images).mean()) > 0.05
  assert 0.0 <= float(corrupted.min()) and float(corrupted.max()) <= 1.0
  output = model.apply(variables, images, rngs=noise)
  # The same draw: reconstruct the corrupted images with the plain model, compare to clean.
  plain = _model('cae')
  expected = plain.apply(variables, corrupted).reconstruction
  np.testing.assert_allclose(output.reconstruction, expected, atol=1e-6)
  np.testing.assert_allclose(output.losses['mse'],
                             jnp.mean(jnp.square(expected - images), axis=(1, 2, 3)), rtol=1e-5)
  # encode/decode take no corruption.
  np.testing.assert_allclose(model.apply(variables, images, False, method=model.encode),
                             plain.apply(variables, images, False, method=plain.encode))
  pictures = model.apply(variables, images, rngs=noise, method=model.pictures)
  assert pictures['corrupted_and_denoised'].shape == (3, 64, 32, 3)


def test_mask_corruption_hides_about_prob_of_the_pixels():
  model = _model('denoising', corruption={'name': 'mask', 'prob': 0.3})
  variables = _init(model, (1, 32, 32, 3))
  images = jnp.full((8, 32, 32, 3), 0.7)
  corrupted = model.apply(variables, images, rngs={'noise': jax.random.key(2)},
                          method=model.corrupt)
  hidden = np.asarray(corrupted[..., 0] == 0.0)
  assert abs(hidden.mean() - 0.3) < 0.03
  np.testing.assert_array_equal(corrupted[..., 1] == 0.0, hidden)  # All channels together.
  np.testing.assert_array_equal(corrupted[~hidden], images[~hidden])


def test_corruption_around_a_quantizer_keeps_its_terms():
  model = _model('vqvae', corruption={'name': 'mask'},
                 bottleneck={'name': 'vq', 'num_codes': 16})
  variables = _init(model, (1, 8, 8, 3))
  images = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
  output, updates = model.apply(variables, images, train=True, rngs={'noise': jax.random.key(3)},
                                mutable=['vq'])
  assert set(output.losses) == {'mse', 'commitment'} and output.codes.shape == (2, 2, 2)
  assert float(updates['vq']['bottleneck_part']['initialized']) == 1.0


def test_model_config_is_frozen_and_hashable():
  config = cifar.model('cae')
  config.backbone.features = [8, 16]
  model, twin = models.create_model(config), models.create_model(config)
  assert model.backbone['features'] == (8, 16)
  assert hash(model) == hash(twin) and model == twin  # So it can be a static jit argument.


def test_a_likelihood_on_the_8_bit_grid_needs_the_unit_input_range():
  config = tiny(cifar.get_config('vae'), input_range=(0.0, 0.5))
  with pytest.raises(config_checks.ConfigError,
                     match=r"config.input_range=\(0.0, 0.5\): model 'seed\+gaussian\+"
                           r"discretized_logistic' \(its likelihood\) is defined on pixels in "
                           r"exactly \(0.0, 1.0\)"):
    config_checks.check(config, num_devices=1)


@pytest.mark.slow
@pytest.mark.parametrize('preset', ['resae', 'denoising'])
def test_loss_falls_on_one_batch(preset):
  model = _model(preset)
  coarse = jax.random.uniform(jax.random.key(3), (8, 8, 8, 3))
  images = jax.image.resize(coarse, (8, 32, 32, 3), 'linear')
  variables = _init(model, (1, 32, 32, 3))
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, i):
    def loss_fn(p):
      output = model.apply({'params': p, **state}, images, train=True,
                           rngs={s: jax.random.fold_in(jax.random.key(9), i)
                                 for s in model.rng_streams})
      return sum(jnp.mean(t) for t in output.losses.values())
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for i in range(8):
    params, opt_state, loss = step(params, opt_state, i)
    losses.append(float(loss))
  assert losses[-1] < 0.8 * losses[0], losses
