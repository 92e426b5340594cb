"""The PyTorch seed autoencoder, and its weights as the Flax `cae` parameter tree.

The single PyTorch definition of the seed model, the reference for parity
(`tools/make_parity_fixture.py`) and speed (`benchmarks/compare_torch.py`,
`benchmarks/torch_seed_train.py`). Needs torch, which is not a project dependency: only those
developer scripts import this module.
"""
import torch
from torch import nn

from convae_jax.models.backbones import seed


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


def torch_to_flax_params(model: SeedAutoencoder) -> dict:
  """The Flax `cae` params tree (numpy arrays) holding `model`'s weights."""
  return seed.params_from_torch({name: value.detach().cpu().numpy()
                                 for name, value in model.state_dict().items()})
