"""`resnet`: a residual convolutional encoder and its mirror decoder.

encoder: conv3x3(widths[0]) -> per stage i: `blocks_per_stage` residual blocks at widths[i],
  then a stride-2 conv4x4 to the next width (halving H and W) -> norm, act, conv1x1 to
  `latent_channels`.
decoder: the mirror image: conv1x1 -> per stage, last first: nearest-neighbour 2x upsampling
  and conv3x3 to widths[i], then residual blocks at widths[i] -> norm, act, conv3x3 to the
  likelihood's outputs.
Blocks are pre-activation (He et al. 2016): x + conv3x3(act(norm(conv3x3(act(norm(x)))))).
With two stages and latent_channels=32 the features are H/4 x W/4 x 32, like the seed's.
"""
import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax

from convae_jax.models import base, layers, parts

NORMALIZATIONS = ('none', 'batch', 'group', 'layer')
ACTIVATIONS = {'relu': nn.relu, 'silu': nn.silu, 'selu': nn.selu}
MAX_GROUPS = 8


def num_groups(width: int) -> int:
  """Group norm's group count: the largest divisor of `width` up to MAX_GROUPS."""
  return max(g for g in range(1, MAX_GROUPS + 1) if width % g == 0)


def conv(features: int, in_features: int, kernel_size: int, stride: int = 1,
         name: str | None = None) -> nn.Conv:
  """A conv with PyTorch's default init (like the seed's layers) and symmetric padding."""
  init = layers.torch_default_init(in_features * kernel_size**2)
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                 padding=(kernel_size - stride + 1) // 2, kernel_init=init, bias_init=init,
                 name=name)


class Norm(nn.Module):
  """act(norm(x)), norm 'batch' (batch_stats collection), 'group', 'layer' (over channels,
  per pixel) or 'none'."""
  kind: str
  act: Callable

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.kind == 'batch':
      # PyTorch's 0.1 in Flax's convention: Flax's default 0.99 lags far behind in short runs.
      return self.act(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    if self.kind == 'group':  # 'GroupNorm_0': the checkpoints' name for it.
      return layers.ActivatedGroupNorm(num_groups(x.shape[-1]), activation=self.act,
                                       name='GroupNorm_0')(x)
    if self.kind == 'layer':
      return self.act(nn.LayerNorm()(x))
    return self.act(x)


class ResidualBlock(nn.Module):
  """Pre-activation residual block at constant width."""
  norm: str
  act: Callable

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    width = x.shape[-1]
    h = conv(width, width, 3, name='conv1')(Norm(self.norm, self.act, name='norm1')(x, train))
    h = conv(width, width, 3, name='conv2')(Norm(self.norm, self.act, name='norm2')(h, train))
    return x + h


class ResEncoder(nn.Module):
  widths: Sequence[int]
  blocks_per_stage: int
  latent_channels: int
  norm: str
  act: Callable

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv(self.widths[0], x.shape[-1], 3, name='stem')(x)
    for i, width in enumerate(self.widths):
      for j in range(self.blocks_per_stage):
        x = ResidualBlock(self.norm, self.act, name=f'stage{i}_block{j}')(x, train)
      out = self.widths[min(i + 1, len(self.widths) - 1)]
      x = conv(out, width, 4, stride=2, name=f'down{i}')(x)
    x = Norm(self.norm, self.act, name='norm_out')(x, train)
    return conv(self.latent_channels, x.shape[-1], 1, name='to_latent')(x)


class ResDecoder(nn.Module):
  widths: Sequence[int]  # Encoder order: stage i works at widths[i], as in the encoder.
  blocks_per_stage: int
  out_channels: int
  norm: str
  act: Callable

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    x = conv(self.widths[-1], z.shape[-1], 1, name='from_latent')(z)
    for i in reversed(range(len(self.widths))):
      # Nearest-neighbour + conv3x3 rather than a k2s2 transposed conv: each output pixel
      # mixes a neighbourhood instead of one input pixel painting a 2x2 patch, which trained
      # to a lower test MSE on photo patches.
      init = layers.torch_default_init(x.shape[-1] * 9)
      x = layers.UpsampleConv(self.widths[i], (3, 3), padding=1, kernel_init=init,
                              bias_init=init, name=f'up{i}')(x)
      for j in range(self.blocks_per_stage):
        x = ResidualBlock(self.norm, self.act, name=f'stage{i}_block{j}')(x, train)
    x = Norm(self.norm, self.act, name='norm_out')(x, train)
    return conv(self.out_channels, x.shape[-1], 3, name='to_image')(x)


@parts.BACKBONES.register('resnet')
@dataclasses.dataclass(frozen=True)
class ResNetBackbone(parts.Backbone):
  """`widths` has one entry per stride-2 stage; wider ones cost more (docs/performance.md)."""
  widths: Sequence[int] = (16, 32)
  blocks_per_stage: int = 1
  normalization: str = 'group'
  activation: str = 'silu'
  latent_channels: int = 32

  def __post_init__(self):
    base.check_widths("model.backbone 'resnet'", 'widths', self.widths)
    base.require("model.backbone 'resnet'", 'blocks_per_stage', self.blocks_per_stage,
                 base.is_int(self.blocks_per_stage) and self.blocks_per_stage >= 0,
                 'be an integer >= 0')
    base.require_one_of("model.backbone 'resnet'", 'normalization', self.normalization, NORMALIZATIONS)
    base.require_one_of("model.backbone 'resnet'", 'activation', self.activation, ACTIVATIONS)
    base.require("model.backbone 'resnet'", 'latent_channels', self.latent_channels,
                 base.is_int(self.latent_channels) and self.latent_channels >= 1,
                 'be an integer >= 1')

  @property
  def num_downsamplings(self) -> int:
    return len(self.widths)

  @property
  def feature_channels(self) -> int:
    return self.latent_channels

  def encoder(self) -> nn.Module:
    return ResEncoder(tuple(self.widths), self.blocks_per_stage, self.latent_channels,
                      self.normalization, ACTIVATIONS[self.activation])

  def decoder(self, out_channels: int) -> nn.Module:
    return ResDecoder(tuple(self.widths), self.blocks_per_stage, out_channels,
                      self.normalization, ACTIVATIONS[self.activation])

  @property
  def decoder_output_layer(self) -> str:
    return 'to_image'
