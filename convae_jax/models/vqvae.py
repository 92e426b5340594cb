"""`vqvae`: a VQ-VAE (van den Oord et al. 2017) with the seed's encoder/decoder and latent grid.

The encoder's H/4 x W/4 x `code_dim` output is snapped to the nearest of `num_codes` codebook
vectors; the decoder sees the codes, and gradients pass the snap unchanged (straight-through).
Loss terms: mse (reconstruction), commitment = `commitment_cost` * |z - sg(q)|^2, and, unless
the codebook follows an exponential moving average of its assigned vectors (`use_ema`),
codebook = |sg(z) - q|^2. Metrics per batch (each example carries its batch's value):
`perplexity` = exp(entropy of code usage) and `unused_codes` (codes no position chose).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from convae_jax.models import base, cae, layers, registry


class VectorQuantizer(nn.Module):
  """Nearest-codebook-vector quantization of the last axis, with straight-through gradients."""
  num_codes: int
  code_dim: int
  use_ema: bool = False
  ema_decay: float = 0.99
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (straight-through quantized z, code indices [..., ], codebook vectors q)."""
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
    if self.use_ema:
      # Only running sums are kept: their mean over devices is exact, a codebook's isn't.
      embed_sum = self.variable('vq_ema', 'embed_sum', lambda: init(
          self.make_rng('params'), (self.num_codes, self.code_dim)))
      cluster_size = self.variable('vq_ema', 'cluster_size', jnp.ones, (self.num_codes,))
      # 0 until the first training batch replaces the random codebook with encoder outputs.
      initialized = self.variable('vq_ema', 'initialized', jnp.zeros, (), jnp.float32)
      if train and not self.is_initializing():
        embed_sum.value = jnp.where(initialized.value > 0, embed_sum.value,
                                    self._sample_rows(z.reshape(-1, self.code_dim)))
        cluster_size.value = jnp.where(initialized.value > 0, cluster_size.value, 1.0)
        initialized.value = jnp.ones_like(initialized.value)
      codebook = embed_sum.value / self._smoothed(cluster_size.value)[:, None]
    else:
      codebook = self.param('codebook', init, (self.num_codes, self.code_dim))

    flat = z.reshape(-1, self.code_dim)
    distances = (jnp.sum(flat**2, axis=1, keepdims=True) - 2.0 * flat @ codebook.T +
                 jnp.sum(codebook**2, axis=1)[None, :])
    codes = jnp.argmin(distances, axis=1)
    one_hot = jax.nn.one_hot(codes, self.num_codes, dtype=flat.dtype)
    quantized = (one_hot @ codebook).reshape(z.shape)

    if self.use_ema and train and not self.is_initializing():
      decay = self.ema_decay
      cluster_size.value = decay * cluster_size.value + (1 - decay) * one_hot.sum(axis=0)
      embed_sum.value = (decay * embed_sum.value +
                         (1 - decay) * one_hot.T @ jax.lax.stop_gradient(flat))
    straight_through = z + jax.lax.stop_gradient(quantized - z)
    return straight_through, codes.reshape(z.shape[:-1]), quantized

  def _sample_rows(self, vectors: jax.Array) -> jax.Array:
    """`num_codes` rows of `vectors` (encoder outputs), evenly spread over the batch.

    Initializing the codebook from data, not noise, keeps most codes in use: a random
    codebook far from the encoder's outputs leaves all but a few codes dead.
    """
    rows = jnp.linspace(0, vectors.shape[0] - 1, self.num_codes).astype(jnp.int32)
    return jax.lax.stop_gradient(vectors[rows])

  def _smoothed(self, cluster_size: jax.Array) -> jax.Array:
    """Laplace-smoothed cluster sizes, so a code nobody picks never divides by zero."""
    total = jnp.sum(cluster_size)
    return (cluster_size + self.epsilon) / (total + self.num_codes * self.epsilon) * total


def code_usage_histogram(codes: jax.Array, num_codes: int, height: int = 96) -> jax.Array:
  """A bar chart of how often each code was chosen: one image [1, height, num_codes, 3]."""
  counts = jnp.bincount(codes.ravel(), length=num_codes).astype(jnp.float32)
  bar_heights = counts / jnp.maximum(counts.max(), 1.0) * height
  rows = jnp.arange(height, 0, -1, dtype=jnp.float32)[:, None]  # Top row first.
  filled = (rows <= bar_heights[None, :]).astype(jnp.float32)
  white, bar = jnp.ones(3), jnp.array([0.12, 0.35, 0.75])
  image = filled[..., None] * bar + (1.0 - filled[..., None]) * white
  return image[None]


@registry.register('vqvae')
class VQVAE(base.Autoencoder):
  """Seed-shaped conv encoder -> 1x1 conv to code_dim -> quantizer -> seed-shaped decoder."""
  features: Sequence[int] = (16, 32)
  code_dim: int = 32
  num_codes: int = 512
  commitment_cost: float = 0.25
  use_ema: bool = False
  ema_decay: float = 0.99
  image_channels: int = 3

  output_range = (0.0, 1.0)

  def __post_init__(self):
    base.check_widths('vqvae', 'features', self.features)
    base.require('vqvae', 'num_codes', self.num_codes, self.num_codes >= 1, 'be >= 1')
    base.require('vqvae', 'code_dim', self.code_dim, self.code_dim >= 1, 'be >= 1')
    base.require('vqvae', 'commitment_cost', self.commitment_cost, self.commitment_cost >= 0,
                 'be >= 0')
    base.require('vqvae', 'ema_decay', self.ema_decay, 0.0 < self.ema_decay < 1.0,
                 'lie in (0, 1)')
    super().__post_init__()

  @property
  def num_downsamplings(self) -> int:
    return len(self.features)

  def setup(self):
    self.encoder = cae.ConvEncoder(self.features)
    self.to_code = layers.torch_conv(self.code_dim, self.features[-1], kernel_size=1, padding=0)
    self.quantizer = VectorQuantizer(self.num_codes, self.code_dim, self.use_ema, self.ema_decay)
    self.decoder = cae.ConvDecoder(tuple(self.features[-2::-1]) + (self.image_channels,))

  def encode(self, images, train):
    """The continuous encoder output, before quantization."""
    del train
    return self.to_code(self.encoder(images))

  def latents(self, images):
    """The quantized latent (codebook vectors): what the decoder sees in evaluation."""
    return self.quantizer(self.encode(images, False), False)[2]

  def quantize(self, latents, train=False):
    return self.quantizer(latents, train)

  def decode(self, latents, train):
    del train
    return self.decoder(latents)

  def __call__(self, images, *, train=False):
    z = self.encode(images, train)
    z_q, codes, quantized = self.quantizer(z, train)
    reconstruction = self.decoder(z_q)
    per_example = lambda x: jnp.mean(x, axis=tuple(range(1, x.ndim)))
    losses = {
        'mse': base.per_example_mse(reconstruction, images),
        'commitment': self.commitment_cost *
                      per_example(jnp.square(z - jax.lax.stop_gradient(quantized))),
    }
    if not self.use_ema:
      losses['codebook'] = per_example(jnp.square(jax.lax.stop_gradient(z) - quantized))
    counts = jnp.bincount(codes.ravel(), length=self.num_codes)
    usage = counts / codes.size
    perplexity = jnp.exp(-jnp.sum(usage * jnp.log(jnp.maximum(usage, 1e-10))))
    unused = jnp.sum(counts == 0).astype(jnp.float32)
    batch = images.shape[0]
    return base.AutoencoderOutput(
        reconstruction=reconstruction, losses=losses,
        metrics={'perplexity': jnp.full((batch,), perplexity),
                 'unused_codes': jnp.full((batch,), unused)})

  def pictures(self, images):
    _, codes, _ = self.quantizer(self.encode(images, False), False)
    return {'code_usage': code_usage_histogram(codes, self.num_codes)}


