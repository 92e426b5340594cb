"""The PyTorch seed autoencoder, and its weights converted to the Flax `cae` parameter tree.

The single PyTorch definition of the seed model, the reference for parity
(`tools/make_parity_fixture.py`) and speed (`benchmarks/compare_torch.py`,
`benchmarks/torch_seed_train.py`). Needs torch, which is not a project dependency: only those
developer scripts import this module.
"""
import numpy as np
import torch
from torch import nn


class SeedAutoencoder(nn.Module):
  """The original CIFAR-10 convolutional autoencoder (NCHW, 7,347 parameters)."""

  def __init__(self):
    super().__init__()
    self.encoder = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=1, padding=1), nn.SELU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(16, 32, 3, stride=1, padding=1), nn.SELU(), nn.MaxPool2d(2, 2))
    self.decoder = nn.Sequential(
        nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(),
        nn.ConvTranspose2d(16, 3, 2, stride=2), nn.Sigmoid())

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.decoder(self.encoder(x))


# Flax (module, layer) <- index of the layer in the torch Sequential.
_LAYERS = {('encoder', 'conv1'): 'encoder.0', ('encoder', 'conv2'): 'encoder.3',
           ('decoder', 'deconv1'): 'decoder.0', ('decoder', 'deconv2'): 'decoder.2'}


def torch_to_flax_params(state_dict) -> dict:
  """Converts a `SeedAutoencoder` state dict to the Flax `cae` params tree (numpy arrays).

  Conv2d weight [out, in, kh, kw] -> kernel [kh, kw, in, out] (both cross-correlate, so no
  flip). ConvTranspose2d weight [in, out, kh, kw] -> kernel [kh, kw, in, out], also no flip:
  with kernel == stride, torch computes out[k*i + a, k*j + b, o] = sum_c x[i, j, c] *
  weight[c, o, a, b] + bias[o], which is `PatchConvTranspose`'s formula.
  """
  params = {}
  for (module, layer), prefix in _LAYERS.items():
    weight = np.asarray(state_dict[f'{prefix}.weight'].detach().cpu().numpy())
    bias = np.asarray(state_dict[f'{prefix}.bias'].detach().cpu().numpy())
    perm = (2, 3, 1, 0) if layer.startswith('conv') else (2, 3, 0, 1)
    params.setdefault(module, {})[layer] = {'kernel': weight.transpose(perm), 'bias': bias}
  return params
