"""`logistic_mixture`: each pixel's colour has a mixture of `num_components` discretized
logistics over the 256 levels of each 8-bit channel (PixelCNN++'s output distribution,
Salimans et al. 2017, without its spatial autoregression), given by the decoder per pixel.

With `channel_coupling`, a component's channels are not independent: channel c's location is
its own mean plus, for each earlier channel j, a learned coefficient in (-1, 1) times x_j's
deviation from the component's mean of channel j. Colour errors are mostly shared by the
channels (brightness), so channel c given the earlier channels is much narrower than alone.
Written as deviations, each component's mean is still the Sigmoid of its output, so the
mixture's mean (the reconstruction) needs no image.

Decoder outputs per pixel: K mixture logits, then K x C means, K x C log-scales (offset by
`initial_log_scale`, floored at `min_log_scale`) and, with coupling, K x C(C-1)/2
coefficients. The loss term `nll` is -log p(x | outputs) per dimension, as for
`discretized_logistic`; it is a proper likelihood, so the model reports bits/dim.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from convae_jax.models import base, parts
from convae_jax.models.likelihoods import discretized_logistic


@parts.LIKELIHOODS.register('logistic_mixture')
class LogisticMixture(parts.Likelihood):
  num_components: int = 5
  channel_coupling: bool = True
  min_log_scale: float = -7.0
  initial_log_scale: float = -3.0

  proper = True
  exact_input_range = (0.0, 1.0)  # The 256-level grid of [0, 1].

  def __post_init__(self):
    base.require("model.likelihood 'logistic_mixture'", 'num_components', self.num_components,
                 base.is_int(self.num_components) and self.num_components >= 1,
                 'be an integer >= 1')
    super().__post_init__()

  @staticmethod
  def _pairs(channels: int) -> int:
    return channels * (channels - 1) // 2

  def decoder_channels(self, image_channels: int) -> int:
    coefficients = self._pairs(image_channels) if self.channel_coupling else 0
    return self.num_components * (1 + 2 * image_channels + coefficients)

  def _split(self, outputs: jax.Array, channels: int):
    """logits [..., K], means and log-scales [..., K, C], coefficients [..., K, C(C-1)/2]."""
    k = self.num_components
    sizes = [k, k * channels, k * channels]
    logits, raw_means, raw_log_scales, raw_coefficients = jnp.split(
        outputs, [sum(sizes[:1]), sum(sizes[:2]), sum(sizes)], axis=-1)
    per_component = lambda a: a.reshape(a.shape[:-1] + (k, -1))
    log_scales = jnp.maximum(per_component(raw_log_scales) + self.initial_log_scale,
                             self.min_log_scale)
    return (logits, nn.sigmoid(per_component(raw_means)), log_scales,
            jnp.tanh(per_component(raw_coefficients)))

  def _channels(self, outputs: jax.Array) -> int:
    """The image's channel count, from the decoder's (decoder_channels grows with it)."""
    size = outputs.shape[-1]
    for channels in range(1, size + 1):
      if self.decoder_channels(channels) == size:
        return channels
    raise ValueError(f"model.likelihood 'logistic_mixture': {size} decoder outputs a pixel "
                     'fit no channel count')

  def mean(self, outputs):
    logits, means, _, _ = self._split(outputs, self._channels(outputs))
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.sum(weights[..., None] * means, axis=-2)

  def __call__(self, outputs, images):
    channels = images.shape[-1]
    logits, means, log_scales, coefficients = self._split(outputs, channels)
    x = images[..., None, :]  # [..., 1, C], against every component.
    locations = [means[..., 0]]
    pair = 0
    for c in range(1, channels):
      location = means[..., c]
      for j in range(c):
        if self.channel_coupling:
          location = location + coefficients[..., pair] * (x[..., j] - means[..., j])
        pair += 1
      locations.append(location)
    log_prob = discretized_logistic.discretized_logistic_log_prob(
        x, jnp.stack(locations, axis=-1), log_scales)
    per_pixel = jax.nn.logsumexp(jnp.sum(log_prob, axis=-1) + jax.nn.log_softmax(logits),
                                 axis=-1)
    nll = -jnp.sum(per_pixel, axis=tuple(range(1, per_pixel.ndim)))
    return {'nll': nll / math.prod(images.shape[1:])}, nll
