"""The contract of a loss term beyond the model's own (config.losses), and their registry.

The objective is the model's terms (the likelihood's and the bottleneck's), plus the terms
`config.losses` names, each with its settings:

    config.losses = {'lpips': {'weight': 1.0, 'network': 'alexnet'},
                     'adversarial': {'weight': 0.5, 'start_step': 2000, ...}}

A term is a frozen dataclass registered in TERMS whose fields are its settings (checked in
`__post_init__` with models.base.require). Given the batch and the model's reconstruction it
gives a loss per example, which the trainer multiplies by `weight`. A term may read
`constants` (frozen weights, such as LPIPS's network, handed to the step as arguments rather
than compiled into it), train a network of its own (`trained_network`) against
`network_loss` (a discriminator, with its own optimizer state), and be `adaptive`: scaled by
VQGAN's adaptive weight, the ratio of the other terms' gradient norm to its own at the
decoder's last layer.
A new term is a new file that registers itself; the trainer does not change for it.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax

from convae_jax.models import registry

TERMS = registry.Registry('losses')


@flax.struct.dataclass
class TermInputs:
  """What a term sees of one train step (on one device)."""
  images: jax.Array  # The batch [N, H, W, C], in `value_range`.
  reconstruction: jax.Array  # The model's reconstruction of it (a network_loss: no gradient).
  step: jax.Array  # The step being taken (0 for the first).
  constants: Any  # The term's `constants()`, on the device.
  params: Any  # The parameters of the term's network (None without one).
  value_range: tuple[float, float] = flax.struct.field(pytree_node=False, default=(0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """A loss term (see the module docstring); `weight` multiplies its loss."""
  weight: float = 1.0

  @property
  def adaptive(self) -> bool:
    """Whether the trainer scales it by the adaptive weight (times `weight`)."""
    return False

  def check(self, model, image_channels: int) -> None:
    """Raises ValueError when the term cannot serve `model` on images of `image_channels`."""

  def constants(self) -> Any:
    """Frozen arrays the term reads (host arrays, loaded once); {} for none."""
    return {}

  def trained_network(self) -> nn.Module | None:
    """The network the term trains against `network_loss` (None for none)."""
    return None

  def __call__(self, inputs: TermInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss per example [N] before `weight`, metrics to log {name: scalar})."""
    raise NotImplementedError

  def network_loss(self, inputs: TermInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(the scalar loss its network minimizes, metrics {name: scalar}); `inputs.params` are
    the network's."""
    raise NotImplementedError
