"""`gaussian`: a reparameterized diagonal Gaussian posterior q(z | x) with a N(0, I) prior, or
with `prior='low_rank'` a learned Gaussian prior over the whole latent grid (low_rank_prior.py,
`prior_rank` columns), whose samples vary together across positions.

A 1x1 projection gives each position's mean and log-variance (`latent_channels` of each). Loss term, per dimension of the image (so learning
rates carry over from the MSE models):
  kl = beta * w(step) * sum over channels of max(KL of the channel, free_bits * positions) / D,
with w rising linearly from 0 to 1 over `kl_warmup_steps` training steps (1 when 0), and the
KL of a channel summed over its positions (free bits: Kingma et al. 2016, in nats per
channel and position; 0 = off; the standard prior only, as a correlated prior's KL does not
split by channel). Metric `kl` (nats per image) is the true KL, the model's rate.
"""
import math

import jax
import jax.numpy as jnp

from convae_jax.models import base, layers, parts
from convae_jax.models.bottlenecks import low_rank_prior

PRIORS = ('standard', 'low_rank')


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) of each element."""
  return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def per_example_sum(x: jax.Array) -> jax.Array:
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


@parts.BOTTLENECKS.register('gaussian')
class Gaussian(parts.Bottleneck):
  latent_channels: int = 32
  beta: float = 1.0
  kl_warmup_steps: int = 0
  free_bits: float = 0.0
  prior: str = 'standard'
  prior_rank: int = 64

  deterministic = False
  can_sample = True
  rng_streams = ('sample',)

  def __post_init__(self):
    what = "model.bottleneck 'gaussian'"
    base.require(what, 'latent_channels', self.latent_channels,
                 base.is_int(self.latent_channels) and self.latent_channels >= 1,
                 'be an integer >= 1')
    base.require(what, 'beta', self.beta, self.beta >= 0, 'be >= 0')
    base.require(what, 'kl_warmup_steps', self.kl_warmup_steps,
                 base.is_int(self.kl_warmup_steps) and self.kl_warmup_steps >= 0,
                 'be an integer >= 0 (0 = no warm-up)')
    base.require(what, 'free_bits', self.free_bits, self.free_bits >= 0, 'be >= 0 (0 = off)')
    base.require_one_of(what, 'prior', self.prior, PRIORS)
    base.require(what, 'prior_rank', self.prior_rank,
                 base.is_int(self.prior_rank) and self.prior_rank >= 1, 'be an integer >= 1')
    base.require(what, 'free_bits', self.free_bits, self.prior == 'standard' or not self.free_bits,
                 "be 0 with prior='low_rank' (its KL does not split by channel)")
    super().__post_init__()

  @property
  def samples_at_training_size(self) -> bool:
    return self.prior == 'low_rank'

  def setup(self):
    self.to_moments = layers.projection(2 * self.latent_channels)
    # Training steps seen, for the KL warm-up (float so the trainer's device mean keeps it).
    self.steps_seen = self.variable('counters', 'steps_seen', jnp.zeros, (), jnp.float32)
    if self.prior == 'low_rank':
      self.learned_prior = low_rank_prior.LowRankGaussian(self.prior_rank)

  def posterior(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and log-variance of q(z | x)."""
    mean, logvar = jnp.split(self.to_moments(features), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def __call__(self, features, train, image_dims):
    mean, logvar = self.posterior(features)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(self.make_rng('sample'), mean.shape)
    if self.prior == 'low_rank':
      kl_map, kl = None, self.learned_prior.kl(mean, logvar)
    else:
      kl_map = gaussian_kl(mean, logvar)
      kl = per_example_sum(kl_map)
    positions = math.prod(mean.shape[1:-1])
    kl_loss = kl
    if self.free_bits:  # The standard prior only (checked).
      per_channel = jnp.sum(kl_map, axis=tuple(range(1, kl_map.ndim - 1)))  # [batch, C]
      kl_loss = jnp.sum(jnp.maximum(per_channel, self.free_bits * positions), axis=-1)
    warmup = (jnp.minimum(1.0, self.steps_seen.value / self.kl_warmup_steps)
              if self.kl_warmup_steps else 1.0)
    if train and not self.is_initializing():
      self.steps_seen.value += 1.0
    return parts.BottleneckOutput(latents=z,
                                  losses={'kl': self.beta * warmup * kl_loss / image_dims},
                                  metrics={'kl': kl}, rate=kl)

  def latents(self, features):
    return self.posterior(features)[0]

  def posterior_sample(self, features):
    mean, logvar = self.posterior(features)
    noise = jax.random.normal(self.make_rng('sample'), mean.shape)
    z = mean + jnp.exp(0.5 * logvar) * noise
    if self.prior == 'low_rank':
      log_q = -0.5 * per_example_sum(jnp.square(noise) + logvar + math.log(2.0 * math.pi))
      return z, log_q - self.learned_prior.log_prob(z)
    # log N(z; mean, var) - log N(z; 0, 1), the 2 pi terms cancelling.
    log_ratio = 0.5 * (jnp.square(z) - jnp.square(noise) - logvar)
    return z, per_example_sum(log_ratio)

  def sample_prior(self, num, height, width):
    shape = (num, height, width, self.latent_channels)
    if self.prior == 'low_rank':
      return self.learned_prior.sample(self.make_rng('sample'), shape)
    return jax.random.normal(self.make_rng('sample'), shape)
