"""`seed`: the seed PyTorch model's convolutions (a Flax port of the CIFAR-10 autoencoder).

encoder: conv3x3(16) -> SELU -> maxpool2 -> conv3x3(32) -> SELU -> maxpool2   (HxW -> H/4xW/4)
(computed as conv -> maxpool -> SELU: the same function, since SELU is increasing; the
conv layer pools, see layers.Conv)
decoder: convT2x2/2(16) -> ReLU -> convT2x2/2(out)     (the likelihood adds the Sigmoid)
`features` are the encoder widths; the decoder mirrors them. Any H, W divisible by 4.
"""
import dataclasses
from typing import Sequence

import flax.linen as nn
import jax

from convae_jax.models import base, layers, parts


class ConvEncoder(nn.Module):
  features: Sequence[int] = (16, 32)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No train-time behaviour (no dropout or batch norm).
    for i, width in enumerate(self.features):
      # Pooling before SELU is the same function (SELU is increasing) on 4x fewer values.
      x = layers.torch_conv(width, x.shape[-1], kernel_size=3, padding=1, pool_window=2,
                            name=f'conv{i + 1}')(x)
      x = nn.selu(x)
    return x


class ConvDecoder(nn.Module):
  """Transposed convs with ReLU between them; the last one's output is left unbounded."""
  features: Sequence[int] = (16, 3)

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    del train
    for i, width in enumerate(self.features):
      z = layers.PatchConvTranspose(width, stride=2, name=f'deconv{i + 1}')(z)
      if i + 1 < len(self.features):
        z = nn.relu(z)
    return z


@parts.BACKBONES.register('seed')
@dataclasses.dataclass(frozen=True)
class SeedBackbone(parts.Backbone):
  features: Sequence[int] = (16, 32)

  def __post_init__(self):
    base.check_widths("model.backbone 'seed'", 'features', self.features)

  @property
  def num_downsamplings(self) -> int:
    return len(self.features)

  @property
  def feature_channels(self) -> int:
    return self.features[-1]

  def encoder(self) -> nn.Module:
    return ConvEncoder(tuple(self.features))

  def decoder(self, out_channels: int) -> nn.Module:
    return ConvDecoder(tuple(self.features[-2::-1]) + (out_channels,))
