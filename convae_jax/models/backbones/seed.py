"""`seed`: the seed PyTorch model's convolutions (a Flax port of the CIFAR-10 autoencoder).

encoder: conv3x3(16) -> SELU -> maxpool2 -> conv3x3(32) -> SELU -> maxpool2   (HxW -> H/4xW/4)
decoder: convT2x2/2(16) -> ReLU -> convT2x2/2(out)     (the likelihood adds the Sigmoid)
`features` are the encoder widths; the decoder mirrors them. Any H, W divisible by 4.
"""
import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np

from convae_jax.models import base, layers, parts


class ConvEncoder(nn.Module):
  features: Sequence[int] = (16, 32)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No train-time behaviour (no dropout or batch norm).
    for i, width in enumerate(self.features):
      init = layers.torch_default_init(x.shape[-1] * 3 * 3)
      x = layers.PooledConv(width, (3, 3), padding=1, window=2, activation=nn.selu,
                            kernel_init=init, bias_init=init, name=f'conv{i + 1}')(x)
    return x


class ConvDecoder(nn.Module):
  """Transposed convs with ReLU between them; the last one's output is left unbounded."""
  features: Sequence[int] = (16, 3)

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    del train
    for i, width in enumerate(self.features):
      # PyTorch computes ConvTranspose2d's fan_in from its weight's dim 1: the output width.
      init = layers.torch_default_init(width * 2 * 2)
      z = nn.ConvTranspose(width, (2, 2), strides=(2, 2), padding='VALID', kernel_init=init,
                           bias_init=init, name=f'deconv{i + 1}')(z)
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

  @property
  def decoder_output_layer(self) -> str:
    return f'deconv{len(self.features)}'


# Flax (module, layer) <- the layer's name prefix in the PyTorch seed's state dict.
TORCH_LAYERS = {('encoder', 'conv1'): 'encoder.0', ('encoder', 'conv2'): 'encoder.3',
                ('decoder', 'deconv1'): 'decoder.0', ('decoder', 'deconv2'): 'decoder.2'}


def params_from_torch(arrays) -> dict:
  """The PyTorch seed's weights (numpy arrays under their state-dict names) as the params
  tree of the `cae` preset (backbone 'seed', features (16, 32)).

  Conv2d [out, in, kh, kw] -> [kh, kw, in, out] (both cross-correlate). ConvTranspose2d
  [in, out, kh, kw] -> [kh, kw, in, out], flipped along kh and kw: with kernel == stride torch
  computes out[k*i + a, k*j + b] = x[i, j] @ weight[:, :, a, b], and nn.ConvTranspose
  x[i, j] @ kernel[k-1-a, k-1-b].
  """
  params = {}
  for (module, layer), prefix in TORCH_LAYERS.items():
    weight = np.asarray(arrays[f'{prefix}.weight'])
    kernel = (weight.transpose(2, 3, 1, 0) if layer.startswith('conv') else
              weight.transpose(2, 3, 0, 1)[::-1, ::-1])
    params.setdefault(module, {})[layer] = {'kernel': np.ascontiguousarray(kernel),
                                            'bias': np.asarray(arrays[f'{prefix}.bias'])}
  return params
