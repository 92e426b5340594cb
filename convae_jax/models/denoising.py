"""`denoising`: any deterministic registered model, trained on corrupted inputs to give clean ones.

`base` is the wrapped model's config (`config.model.base`, e.g. {'name': 'cae', ...}). Inputs
are corrupted in training and in evaluation alike (a fresh draw from the 'noise' stream), so
the eval metrics measure denoising: the reconstruction of a corrupted image against the
clean one.
  noise='gaussian': x + N(0, noise_std^2) in [0, 1] pixel units, clipped to the input range;
  noise='mask':     each pixel (all channels) set to the range's low end with prob. mask_prob.
"""
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from convae_jax.models import base, registry

NOISES = ('gaussian', 'mask')


@registry.register('denoising')
class DenoisingAutoencoder(base.Autoencoder):
  base: Mapping[str, Any] = None  # The wrapped model's config: {'name': ..., its settings}.
  noise: str = 'gaussian'
  noise_std: float = 0.1
  mask_prob: float = 0.25

  def __post_init__(self):
    if not self.base or 'name' not in self.base:
      raise ValueError("denoising: set model.base to the wrapped model's config, e.g. "
                       "{'name': 'cae'}")
    inner = registry.get_model_class(self.base['name'])
    if inner is type(self) or not inner.deterministic:
      raise ValueError(f"denoising: model.base.name={self.base['name']!r} is not a deterministic "
                       'autoencoder; wrap one of: ' + ', '.join(
                           n for n in registry.known_models()
                           if registry.get_model_class(n).deterministic and n != 'denoising'))
    if self.noise not in NOISES:
      raise ValueError(f'denoising: noise={self.noise!r}; allowed: {", ".join(NOISES)}')
    if self.noise_std < 0:
      raise ValueError(f'denoising: noise_std={self.noise_std} must be >= 0')
    if not 0.0 <= self.mask_prob < 1.0:
      raise ValueError(f'denoising: mask_prob={self.mask_prob} must lie in [0, 1)')
    # Build the wrapped model now, so that its own settings are checked with ours.
    object.__setattr__(self, '_inner', registry.create_model(
        ml_collections.ConfigDict(dict(self.base))))
    super().__post_init__()

  @property
  def output_range(self):
    return self._inner.output_range

  @property
  def num_downsamplings(self) -> int:
    return self._inner.num_downsamplings

  @property
  def rng_streams(self):
    return ('noise',) + tuple(self._inner.rng_streams)

  def setup(self):
    self.inner = self._inner.clone()

  def corrupt(self, images: jax.Array) -> jax.Array:
    low, high = self.output_range
    key = self.make_rng('noise')
    if self.noise == 'gaussian':
      noisy = images + self.noise_std * (high - low) * jax.random.normal(key, images.shape)
      return jnp.clip(noisy, low, high)
    keep = jax.random.bernoulli(key, 1.0 - self.mask_prob, images.shape[:-1] + (1,))
    return jnp.where(keep, images, low)

  def encode(self, images, train):
    return self.inner.encode(images, train)

  def decode(self, latents, train):
    return self.inner.decode(latents, train)

  def __call__(self, images, *, train=False):
    reconstruction = self.decode(self.encode(self.corrupt(images), train), train)
    return base.AutoencoderOutput(reconstruction=reconstruction,
                                  losses={'mse': base.per_example_mse(reconstruction, images)})
