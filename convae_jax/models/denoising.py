"""`denoising`: any deterministic registered model, trained on corrupted inputs to give clean ones.

`base` is the wrapped model's config (`config.model.base`, e.g. {'name': 'cae', ...}). Inputs
are corrupted in training and in evaluation alike (a fresh draw from the 'noise' stream), so
the eval metrics measure denoising: the reconstruction of a corrupted image against the
clean one.
  noise='gaussian': x + N(0, noise_std^2) in [0, 1] pixel units, clipped to the output range;
  noise='mask':     each pixel (all channels) set to the range's low end with prob. mask_prob.
The loss terms and metrics are the wrapped model's on the corrupted batch (so a VQ-VAE keeps
its commitment loss and codebook updates), except that its 'mse' is taken against the clean
images.
"""
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from convae_jax.models import base, layers, registry

NOISES = ('gaussian', 'mask')


def _freeze(config: Any) -> ml_collections.FrozenConfigDict:
  """`config` as a FrozenConfigDict: hashable (Flax hashes module fields), lists as tuples."""
  if isinstance(config, (Mapping, ml_collections.ConfigDict)):
    return ml_collections.FrozenConfigDict(config)
  raise ValueError("denoising: set model.base to the wrapped model's config, e.g. "
                   f"{{'name': 'cae'}}; got {config!r}")


@registry.register('denoising')
class DenoisingAutoencoder(base.Autoencoder):
  """Trains the model `base` describes on corrupted inputs against the clean images.

  `base` is a dict, ConfigDict or FrozenDict holding 'name' and the model's settings; it is
  stored as a FrozenConfigDict. `encode`/`decode` are the wrapped model's (no corruption), so
  its latent can be used directly.
  """
  base: Mapping[str, Any] | None = None
  noise: str = 'gaussian'
  noise_std: float = 0.1
  mask_prob: float = 0.25

  def __post_init__(self):
    object.__setattr__(self, 'base', _freeze(self.base))
    if 'name' not in self.base:
      raise ValueError("denoising: model.base has no 'name'; set it to the wrapped model's "
                       "config, e.g. {'name': 'cae'}")
    name = self.base['name']
    try:
      inner_cls = registry.get_model_class(name)
    except ValueError as e:
      raise ValueError(f'denoising: model.base: {e}') from e
    if issubclass(inner_cls, DenoisingAutoencoder):
      raise ValueError(f'denoising: model.base.name={name!r} cannot wrap a denoising model; '
                       f'wrap one of: {", ".join(_wrappable())}')
    if not inner_cls.deterministic:
      raise ValueError(f'denoising: model.base.name={name!r} is not a deterministic autoencoder '
                       f'(its output is random); wrap one of: {", ".join(_wrappable())}')
    if self.noise not in NOISES:
      raise ValueError(f'denoising: noise={self.noise!r}; allowed: {", ".join(NOISES)}')
    if not self.noise_std >= 0:
      raise ValueError(f'denoising: noise_std={self.noise_std} must be >= 0')
    if not 0.0 <= self.mask_prob < 1.0:
      raise ValueError(f'denoising: mask_prob={self.mask_prob} must lie in [0, 1)')
    # Built here rather than in setup so the properties below work on an unbound model, and
    # the wrapped model's own settings are checked with ours.
    try:
      inner = registry.create_model(self.base.as_configdict())
    except ValueError as e:
      raise ValueError(f'denoising: model.base: {e}') from e
    object.__setattr__(self, '_inner', inner)
    super().__post_init__()

  @property
  def output_range(self) -> tuple[float, float]:
    return self._inner.output_range

  @property
  def num_downsamplings(self) -> int:
    return self._inner.num_downsamplings

  @property
  def image_channels(self) -> int:
    return self._inner.image_channels

  @property
  def rng_streams(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(('noise',) + tuple(self._inner.rng_streams)))

  def setup(self):
    self.inner = self._inner.clone()

  def corrupt(self, images: jax.Array) -> jax.Array:
    """A fresh corruption of `images` from the 'noise' stream."""
    low, high = self.output_range
    key = self.make_rng('noise')
    if self.noise == 'gaussian':
      noisy = images + self.noise_std * (high - low) * jax.random.normal(key, images.shape)
      corrupted = jnp.clip(noisy, low, high)
    else:
      keep = jax.random.bernoulli(key, 1.0 - self.mask_prob, images.shape[:-1] + (1,))
      corrupted = jnp.where(keep, images, low)
    # Drawn once: XLA would otherwise redraw the noise in each of the first conv's 27 taps.
    return layers.stored_once(corrupted)

  def encode(self, images, train):
    return self.inner.encode(images, train)

  def decode(self, latents, train):
    return self.inner.decode(latents, train)

  def __call__(self, images, *, train=False):
    output = self.inner(self.corrupt(images), train=train)
    if 'mse' not in output.losses:
      raise ValueError(f"denoising: model.base.name={self.base['name']!r} has no 'mse' loss term "
                       f'to take against the clean images; its terms: {", ".join(output.losses)}')
    losses = dict(output.losses, mse=base.per_example_mse(output.reconstruction, images))
    return output.replace(losses=losses)

  def pictures(self, images):
    """The wrapped model's pictures, and corrupted images above their reconstructions."""
    low, high = self.output_range
    corrupted = self.corrupt(images)
    denoised = self.inner(corrupted, train=False).reconstruction
    pair = (jnp.concatenate([corrupted, denoised], axis=1) - low) / (high - low)
    return {**self.inner.pictures(images), 'corrupted_and_denoised': pair}


def _wrappable() -> list[str]:
  return [n for n in registry.known_models()
          if registry.get_model_class(n).deterministic
          and not issubclass(registry.get_model_class(n), DenoisingAutoencoder)]
