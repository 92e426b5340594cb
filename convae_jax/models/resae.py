"""`resae`: a deeper convolutional autoencoder with residual blocks, the seed's latent shape.

encoder: conv3x3(widths[0]) -> per stage: blocks_per_stage residual blocks at that width, then a
stride-2 conv to the next width (halving H and W) -> norm, act, conv1x1 to `latent_channels`.
decoder: the mirror image, upsampling with k2s2 transposed convolutions, ending in Sigmoid.
With two stages and latent_channels=32 the latent is H/4 x W/4 x 32, like the seed's.
"""
from typing import Callable, Sequence

import flax.linen as nn
import jax

from convae_jax.models import base, layers, registry

NORMALIZATIONS = ('none', 'batch', 'group', 'layer')
ACTIVATIONS = {'relu': nn.relu, 'silu': nn.silu, 'selu': nn.selu}


class Norm(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.kind == 'batch':
      return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    if self.kind == 'group':
      return nn.GroupNorm(num_groups=_groups(x.shape[-1]))(x)
    if self.kind == 'layer':
      return nn.LayerNorm()(x)
    return x


def _groups(width: int) -> int:
  """Up to 8 groups, as many as divide the width."""
  return max(g for g in range(1, 9) if width % g == 0)


class ResidualBlock(nn.Module):
  """Pre-activation residual block: x + conv(act(norm(conv(act(norm(x))))))."""
  norm: str
  act: Callable

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    width = x.shape[-1]
    h = layers.torch_conv(width, width)(self.act(Norm(self.norm)(x, train)))
    h = layers.torch_conv(width, width)(self.act(Norm(self.norm)(h, train)))
    return x + h


class ResEncoder(nn.Module):
  widths: Sequence[int]
  blocks_per_stage: int
  latent_channels: int
  norm: str
  act: Callable

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = layers.torch_conv(self.widths[0], x.shape[-1])(x)
    for i, width in enumerate(self.widths):
      for _ in range(self.blocks_per_stage):
        x = ResidualBlock(self.norm, self.act)(x, train)
      out = self.widths[min(i + 1, len(self.widths) - 1)]
      x = nn.Conv(out, (4, 4), strides=(2, 2), padding=1,
                  kernel_init=layers.torch_default_init(x.shape[-1] * 16),
                  bias_init=layers.torch_default_init(x.shape[-1] * 16))(x)
    x = self.act(Norm(self.norm)(x, train))
    return layers.torch_conv(self.latent_channels, x.shape[-1], kernel_size=1, padding=0)(x)


class ResDecoder(nn.Module):
  widths: Sequence[int]  # Encoder order; the decoder walks them backwards.
  blocks_per_stage: int
  image_channels: int
  norm: str
  act: Callable

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    widths = tuple(reversed(self.widths))
    x = layers.torch_conv(widths[0], z.shape[-1], kernel_size=1, padding=0)(z)
    for i, width in enumerate(widths):
      x = layers.PatchConvTranspose(widths[min(i + 1, len(widths) - 1)] if i + 1 < len(widths)
                                    else width, stride=2)(x)
      for _ in range(self.blocks_per_stage):
        x = ResidualBlock(self.norm, self.act)(x, train)
    x = self.act(Norm(self.norm)(x, train))
    return nn.sigmoid(layers.torch_conv(self.image_channels, x.shape[-1])(x))


@registry.register('resae')
class ResidualAutoencoder(base.Autoencoder):
  """Residual conv AE; `widths` has one entry per stride-2 stage."""
  widths: Sequence[int] = (16, 32)
  blocks_per_stage: int = 1
  normalization: str = 'group'
  activation: str = 'silu'
  latent_channels: int = 32
  image_channels: int = 3

  output_range = (0.0, 1.0)  # Sigmoid output.

  def __post_init__(self):
    if not self.widths or any(w < 1 for w in self.widths):
      raise ValueError(f'resae: widths={tuple(self.widths)} must be one or more positive widths')
    if self.blocks_per_stage < 0:
      raise ValueError(f'resae: blocks_per_stage={self.blocks_per_stage} must be >= 0')
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f'resae: normalization={self.normalization!r}; allowed: '
                       f'{", ".join(NORMALIZATIONS)}')
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'resae: activation={self.activation!r}; allowed: {", ".join(ACTIVATIONS)}')
    if self.latent_channels < 1:
      raise ValueError(f'resae: latent_channels={self.latent_channels} must be >= 1')
    super().__post_init__()

  @property
  def num_downsamplings(self) -> int:
    return len(self.widths)

  def setup(self):
    act = ACTIVATIONS[self.activation]
    self.encoder = ResEncoder(self.widths, self.blocks_per_stage, self.latent_channels,
                              self.normalization, act)
    self.decoder = ResDecoder(self.widths, self.blocks_per_stage, self.image_channels,
                              self.normalization, act)

  def encode(self, images, train):
    return self.encoder(images, train)

  def decode(self, latents, train):
    return self.decoder(latents, train)
