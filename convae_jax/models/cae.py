"""The seed convolutional autoencoder (a Flax port of the PyTorch CIFAR-10 model).

encoder: conv3x3(16) -> SELU -> maxpool2 -> conv3x3(32) -> SELU -> maxpool2   (HxW -> H/4xW/4)
(computed as conv -> maxpool -> SELU: the same function, since SELU is increasing; the
conv layer pools, see layers.Conv)
decoder: convT2x2/2(16) -> ReLU -> convT2x2/2(3) -> Sigmoid                  (back to HxW)
Fully convolutional: any H, W divisible by 4. NHWC throughout.
"""
from typing import Sequence

import flax.linen as nn
import jax

from convae_jax.models import base, layers, registry


class ConvEncoder(nn.Module):
  features: Sequence[int] = (16, 32)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.features):
      # Pooling before SELU is the same function (SELU is increasing) on 4x fewer values.
      x = layers.torch_conv(width, x.shape[-1], kernel_size=3, padding=1, pool_window=2,
                            name=f'conv{i + 1}')(x)
      x = nn.selu(x)
    return x


class ConvDecoder(nn.Module):
  features: Sequence[int] = (16, 3)

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    for i, width in enumerate(self.features):
      z = layers.PatchConvTranspose(width, stride=2, name=f'deconv{i + 1}')(z)
      z = nn.relu(z) if i + 1 < len(self.features) else nn.sigmoid(z)
    return z


@registry.register('cae')
class ConvAutoencoder(base.Autoencoder):
  """The seed model. `features` are the encoder widths; the decoder mirrors them."""
  features: Sequence[int] = (16, 32)
  image_channels: int = 3

  output_range = (0.0, 1.0)  # Sigmoid output.

  def __post_init__(self):
    base.check_widths('cae', 'features', self.features)
    super().__post_init__()

  @property
  def num_downsamplings(self) -> int:
    return len(self.features)

  def setup(self):
    self.encoder = ConvEncoder(self.features)
    self.decoder = ConvDecoder(tuple(self.features[-2::-1]) + (self.image_channels,))

  def encode(self, images, train):
    del train  # No train-time behaviour (no dropout or batch norm).
    return self.encoder(images)

  def decode(self, latents, train):
    del train
    return self.decoder(latents)
