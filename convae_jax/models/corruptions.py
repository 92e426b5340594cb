"""Input corruptions for denoising, registered in parts.CORRUPTIONS.

Inputs are corrupted in training and evaluation alike (a fresh draw from the 'noise'
stream), so eval metrics measure denoising: the reconstruction of a corrupted image against
the clean one.
  none:     the images as they are;
  gaussian: x + N(0, std^2) in [0, 1] pixel units, clipped to the value range;
  mask:     each pixel (all channels) set to the range's low end with probability `prob`.
"""
import jax
import jax.numpy as jnp

from convae_jax.models import base, parts


@parts.CORRUPTIONS.register('none')
class NoCorruption(parts.Corruption):
  rng_streams = ()

  def __call__(self, images, value_range):
    return images


@parts.CORRUPTIONS.register('gaussian')
class GaussianNoise(parts.Corruption):
  std: float = 0.1

  def __post_init__(self):
    base.require("model.corruption 'gaussian'", 'std', self.std, self.std >= 0, 'be >= 0')
    super().__post_init__()

  def __call__(self, images, value_range):
    low, high = value_range
    noise = jax.random.normal(self.make_rng('noise'), images.shape)
    return jnp.clip(images + self.std * (high - low) * noise, low, high)


@parts.CORRUPTIONS.register('mask')
class PixelMask(parts.Corruption):
  prob: float = 0.25

  def __post_init__(self):
    base.require("model.corruption 'mask'", 'prob', self.prob, 0.0 <= self.prob < 1.0, 'lie in [0, 1)')
    super().__post_init__()

  def __call__(self, images, value_range):
    keep = jax.random.bernoulli(self.make_rng('noise'), 1.0 - self.prob, images.shape[:-1] + (1,))
    return jnp.where(keep, images, value_range[0])
