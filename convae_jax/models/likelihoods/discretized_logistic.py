"""`discretized_logistic`: each 8-bit pixel value x in {0, 1/255, ..., 1} has a discretized
logistic distribution (PixelCNN++, Salimans et al. 2017, one component) whose mean is the
Sigmoid of the decoder's output; the edges 0 and 1 take the tails.

`log_scale='channel'`: a learned log-scale per image channel; `'pixel'`: the decoder gives one
per pixel and channel (twice the outputs, offset by `initial_log_scale`); either is floored
at `min_log_scale`.
The loss term `nll` is -log p(x | outputs) per dimension (so learning rates carry over from
the MSE); it is a proper likelihood, so the model reports bits/dim.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from convae_jax.models import base, parts

LOG_SCALES = ('channel', 'pixel')


def discretized_logistic_log_prob(x: jax.Array, mean: jax.Array,
                                  log_scale: jax.Array) -> jax.Array:
  """log P(x) in nats, per element, for x on the 256-level grid of [0, 1]."""
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
  return jnp.where(
      x < half_bin, log_cdf_plus,
      jnp.where(x > 1.0 - half_bin, log_one_minus_cdf_minus,
                jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-12)), log_pdf_mid)))


def discretized_logistic_nll(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """-log P(x) in nats, summed per example, for x on the 256-level grid of [0, 1]."""
  log_prob = discretized_logistic_log_prob(x, mean, log_scale)
  return -jnp.sum(log_prob, axis=tuple(range(1, x.ndim)))


@parts.LIKELIHOODS.register('discretized_logistic')
class DiscretizedLogistic(parts.Likelihood):
  log_scale: str = 'channel'
  min_log_scale: float = -7.0
  initial_log_scale: float = -3.0

  proper = True
  exact_input_range = (0.0, 1.0)  # The 256-level grid of [0, 1].

  def __post_init__(self):
    base.require_one_of("model.likelihood 'discretized_logistic'", 'log_scale', self.log_scale,
                        LOG_SCALES)
    super().__post_init__()

  def decoder_channels(self, image_channels: int) -> int:
    return image_channels * (2 if self.log_scale == 'pixel' else 1)

  def mean(self, outputs):
    return nn.sigmoid(self._split(outputs)[0])

  def _split(self, outputs):
    if self.log_scale == 'pixel':
      return jnp.split(outputs, 2, axis=-1)
    return outputs, None

  @nn.compact
  def __call__(self, outputs, images):
    raw_mean, raw_log_scale = self._split(outputs)
    if raw_log_scale is None:
      log_scale = self.param('log_scale', nn.initializers.constant(self.initial_log_scale),
                             (images.shape[-1],))
    else:  # Offset so that zero outputs start at the per-channel initial value.
      log_scale = raw_log_scale + self.initial_log_scale
    log_scale = jnp.maximum(log_scale, self.min_log_scale)
    nll = discretized_logistic_nll(images, nn.sigmoid(raw_mean), log_scale)
    return {'nll': nll / math.prod(images.shape[1:])}, nll
