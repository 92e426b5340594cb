"""`vae`: a convolutional VAE with a Gaussian latent of the seed's shape (H/4 x W/4 x C).

Likelihood: each pixel value x in {0, 1/255, ..., 1} has a discretized logistic density
(PixelCNN++, Salimans et al. 2017, one component) with the decoder's output as its mean and a
learned log-scale per channel; the edges 0 and 1 take the tails. So `bpd` is an exact
negative ELBO in bits per dimension of 8-bit images.

Loss terms (per dimension, so learning rates carry over from the MSE models):
  nll = -log p(x | z) / D,   kl = beta * w(step) * KL(q(z | x) || N(0, I)) / D,
with w rising linearly from 0 to 1 over `kl_warmup_steps` training steps (1 when 0).
Metrics per image: `nelbo` (nats), `kl` (nats), `bpd` = nelbo / (D ln 2), all with beta = 1.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from convae_jax.models import base, cae, layers, registry


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the batch axis: shape [batch]."""
  kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(kl, axis=tuple(range(1, kl.ndim)))


def discretized_logistic_nll(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """-log P(x) in nats, summed per example, for x on the 256-level grid of [0, 1]."""
  half_bin = 0.5 / 255.0
  inv_scale = jnp.exp(-log_scale)
  centered = x - mean
  plus = inv_scale * (centered + half_bin)
  minus = inv_scale * (centered - half_bin)
  log_cdf_plus = plus - jax.nn.softplus(plus)  # log sigmoid(plus), for x = 0
  log_one_minus_cdf_minus = -jax.nn.softplus(minus)  # log (1 - sigmoid(minus)), for x = 1
  cdf_delta = jax.nn.sigmoid(plus) - jax.nn.sigmoid(minus)
  mid = inv_scale * centered
  # Where the bin's mass underflows, use density x bin width at its centre instead.
  log_pdf_mid = mid - log_scale - 2.0 * jax.nn.softplus(mid) - math.log(255.0)
  log_prob = jnp.where(
      x < half_bin, log_cdf_plus,
      jnp.where(x > 1.0 - half_bin, log_one_minus_cdf_minus,
                jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-12)), log_pdf_mid)))
  return -jnp.sum(log_prob, axis=tuple(range(1, x.ndim)))


@registry.register('vae')
class VariationalAutoencoder(base.Autoencoder):
  """Seed-shaped conv encoder -> Gaussian latent -> seed-shaped conv decoder."""
  features: Sequence[int] = (16, 32)
  latent_channels: int = 32
  beta: float = 1.0
  kl_warmup_steps: int = 0
  image_channels: int = 3

  output_range = (0.0, 1.0)
  rng_streams = ('sample',)
  deterministic = False
  can_sample = True  # sample() from the N(0, I) prior, interpolate() between posterior means.

  def __post_init__(self):
    base.require('vae', 'beta', self.beta, self.beta >= 0, 'be >= 0')
    base.require('vae', 'kl_warmup_steps', self.kl_warmup_steps, self.kl_warmup_steps >= 0,
                 'be >= 0 (0 = no warm-up)')
    base.require('vae', 'latent_channels', self.latent_channels, self.latent_channels >= 1,
                 'be >= 1')
    base.check_widths('vae', 'features', self.features)
    super().__post_init__()

  @property
  def num_downsamplings(self) -> int:
    return len(self.features)

  def setup(self):
    self.encoder = cae.ConvEncoder(self.features)
    self.to_moments = layers.torch_conv(2 * self.latent_channels, self.features[-1],
                                        kernel_size=1, padding=0)
    self.decoder = cae.ConvDecoder(tuple(self.features[-2::-1]) + (self.image_channels,))
    self.log_scale = self.param('log_scale', nn.initializers.constant(-3.0),
                                (self.image_channels,))
    # Training steps seen, for the KL warm-up (float so the trainer's device mean keeps it).
    self.steps_seen = self.variable('counters', 'vae_steps', jnp.zeros, (), jnp.float32)

  def posterior(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and log-variance of q(z | images)."""
    mean, logvar = jnp.split(self.to_moments(self.encoder(images)), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def encode(self, images, train):
    del train
    return self.posterior(images)[0]

  def decode(self, latents, train):
    del train
    return self.decoder(latents)

  def __call__(self, images, *, train=False):
    mean, logvar = self.posterior(images)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(self.make_rng('sample'), mean.shape)
    decoded = self.decoder(z)
    nll = discretized_logistic_nll(images, decoded, self.log_scale)
    kl = gaussian_kl(mean, logvar)
    dims = math.prod(images.shape[1:])
    warmup = (jnp.minimum(1.0, self.steps_seen.value / self.kl_warmup_steps)
              if self.kl_warmup_steps else 1.0)
    if train and not self.is_initializing():
      self.steps_seen.value += 1.0
    nelbo = nll + kl
    return base.AutoencoderOutput(
        # Training sees a sample; evaluation shows the decoded posterior mean.
        reconstruction=decoded if train else self.decoder(mean),
        losses={'nll': nll / dims, 'kl': self.beta * warmup * kl / dims},
        metrics={'nelbo': nelbo, 'kl': kl, 'bpd': nelbo / (dims * math.log(2.0))})

  def sample(self, num: int, height: int, width: int) -> jax.Array:
    """Decoded means of latents drawn from the prior N(0, I)."""
    factor = 2**self.num_downsamplings
    z = jax.random.normal(self.make_rng('sample'),
                          (num, height // factor, width // factor, self.latent_channels))
    return self.decoder(z)

  def interpolate(self, start: jax.Array, end: jax.Array, steps: int = 8) -> jax.Array:
    """Decoded means along the line between the posterior means of `start` and `end` [N,...].

    Returns [N * steps, H, W, C]: for each pair, `steps` images from start to end.
    """
    z0, z1 = self.posterior(start)[0], self.posterior(end)[0]
    t = jnp.linspace(0.0, 1.0, steps).reshape(1, steps, 1, 1, 1)
    path = (1.0 - t) * z0[:, None] + t * z1[:, None]
    return self.decoder(path.reshape((-1,) + z0.shape[1:]))

  def pictures(self, images):
    n, h, w, _ = images.shape
    pairs = max(1, min(4, n // 2))
    return {
        'prior_samples': self.sample(n, h, w),
        'interpolation': self.interpolate(images[:pairs], images[pairs:2 * pairs]),
    }
