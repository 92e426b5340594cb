"""The `resnet` backbone (convae_jax/models/backbones/resnet.py) in PyTorch, for speed comparisons.

The same network as the Flax one with GroupNorm and SiLU (resae's defaults): the same layers,
widths, paddings, group counts and epsilon, nearest-neighbour upsampling, a Sigmoid on the
output (the `mse` likelihood's mean). `torch_to_flax_params` maps its weights onto the Flax
parameter tree, so benchmarks/compare_torch.py checks that both compute the same function
before timing them. Needs torch (not a project dependency).
"""
from typing import Sequence

import numpy as np
import torch
from torch import nn

from convae_jax.models.backbones import resnet

_EPSILON = 1e-6  # flax.linen.GroupNorm's; PyTorch's default is 1e-5.


def _conv(in_features: int, features: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(in_features, features, kernel_size, stride,
                   padding=(kernel_size - stride + 1) // 2)


def _norm(width: int) -> nn.GroupNorm:
  return nn.GroupNorm(resnet.num_groups(width), width, eps=_EPSILON)


class Block(nn.Module):
  """x + conv2(silu(norm2(conv1(silu(norm1(x))))))."""

  def __init__(self, width: int):
    super().__init__()
    self.norm1, self.conv1 = _norm(width), _conv(width, width, 3)
    self.norm2, self.conv2 = _norm(width), _conv(width, width, 3)

  def forward(self, x):
    h = self.conv1(nn.functional.silu(self.norm1(x)))
    return x + self.conv2(nn.functional.silu(self.norm2(h)))


class ResNetAutoencoder(nn.Module):
  """resae: the resnet backbone's encoder and decoder, identity bottleneck, Sigmoid output."""

  def __init__(self, widths: Sequence[int] = (16, 32), blocks_per_stage: int = 1,
               latent_channels: int = 32, image_channels: int = 3):
    super().__init__()
    widths = tuple(widths)
    self.encoder = nn.ModuleDict({'stem': _conv(image_channels, widths[0], 3)})
    for i, width in enumerate(widths):
      for j in range(blocks_per_stage):
        self.encoder[f'stage{i}_block{j}'] = Block(width)
      self.encoder[f'down{i}'] = _conv(width, widths[min(i + 1, len(widths) - 1)], 4, 2)
    self.encoder['norm_out'] = _norm(widths[-1])
    self.encoder['to_latent'] = _conv(widths[-1], latent_channels, 1)
    self.decoder = nn.ModuleDict({'from_latent': _conv(latent_channels, widths[-1], 1)})
    previous = widths[-1]
    for i in reversed(range(len(widths))):
      self.decoder[f'up{i}'] = _conv(previous, widths[i], 3)
      for j in range(blocks_per_stage):
        self.decoder[f'stage{i}_block{j}'] = Block(widths[i])
      previous = widths[i]
    self.decoder['norm_out'] = _norm(widths[0])
    self.decoder['to_image'] = _conv(widths[0], image_channels, 3)
    self.widths, self.blocks_per_stage = widths, blocks_per_stage

  def forward(self, x):
    e, d = self.encoder, self.decoder
    x = e['stem'](x)
    for i in range(len(self.widths)):
      for j in range(self.blocks_per_stage):
        x = e[f'stage{i}_block{j}'](x)
      x = e[f'down{i}'](x)
    x = e['to_latent'](nn.functional.silu(e['norm_out'](x)))
    x = d['from_latent'](x)
    for i in reversed(range(len(self.widths))):
      x = d[f'up{i}'](nn.functional.interpolate(x, scale_factor=2, mode='nearest'))
      for j in range(self.blocks_per_stage):
        x = d[f'stage{i}_block{j}'](x)
    return torch.sigmoid(d['to_image'](nn.functional.silu(d['norm_out'](x))))


def torch_to_flax_params(model: ResNetAutoencoder) -> dict:
  """The Flax `resae` params tree (numpy arrays) holding `model`'s weights."""
  params = {}
  for name, module in model.named_modules():
    path = name.split('.')  # e.g. encoder.stage0_block0.conv1
    if isinstance(module, nn.Conv2d):  # [out, in, kh, kw] -> [kh, kw, in, out]
      leaf = {'kernel': module.weight.detach().numpy().transpose(2, 3, 1, 0),
              'bias': module.bias.detach().numpy()}
    elif isinstance(module, nn.GroupNorm):  # Flax's nn.GroupNorm is a submodule of Norm.
      leaf = {'GroupNorm_0': {'scale': module.weight.detach().numpy(),
                              'bias': module.bias.detach().numpy()}}
    else:
      continue
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = {k: np.asarray(v) if not isinstance(v, dict) else v
                      for k, v in leaf.items()}
  return params
