"""The parts the `autoencoder` model combines, their contracts and their registries.

An autoencoder here is: an optional input corruption -> a backbone's encoder -> a bottleneck
-> the backbone's decoder -> a likelihood (the reconstruction loss, and what the outputs
mean). Each part is a class registered by name in its registry below; its dataclass fields
are its settings, set from `config.model.<part>`:

    config.model.backbone = {'name': 'resnet', 'widths': (32, 64)}
    config.model.bottleneck = {'name': 'fsq', 'levels': (8, 8, 8)}

A new part is a new file that subclasses the contract below and registers itself (see
docs/parts.md); a config that imports it can use it, and nothing else changes. Fields are
checked in `__post_init__` with `base.require` (one ValueError naming the field and the rule).
"""
import dataclasses
import typing
from typing import ClassVar

import flax.linen as nn
import flax.struct
import jax
import ml_collections

from convae_jax.models import registry

BACKBONES = registry.Registry('model.backbone')
BOTTLENECKS = registry.Registry('model.bottleneck')
LIKELIHOODS = registry.Registry('model.likelihood')
CORRUPTIONS = registry.Registry('model.corruption')


@dataclasses.dataclass(frozen=True)
class Backbone:
  """An encoder and its mirror decoder (a plain frozen dataclass that makes the two modules).

  The encoder maps images [N, H, W, C] to features [N, H/f, W/f, `feature_channels`] with
  f = 2**`num_downsamplings`; the decoder maps latents [N, H/f, W/f, any channels] to
  unbounded outputs [N, H, W, out_channels], which the likelihood turns into pixels.
  """

  @property
  def num_downsamplings(self) -> int:
    raise NotImplementedError

  @property
  def feature_channels(self) -> int:
    """Channels of the encoder's output."""
    raise NotImplementedError

  def encoder(self) -> nn.Module:
    """A module called as encoder(images, train) -> features."""
    raise NotImplementedError

  def decoder(self, out_channels: int) -> nn.Module:
    """A module called as decoder(latents, train) -> outputs with `out_channels` channels."""
    raise NotImplementedError

  @property
  def decoder_output_layer(self) -> str:
    """The name of the decoder's last layer (a submodule with a 'kernel'), at which VQGAN's
    adaptive loss weight compares gradient norms."""
    raise NotImplementedError


@flax.struct.dataclass
class BottleneckOutput:
  """What a bottleneck gives: per-example arrays [batch] in `losses` and `metrics`."""
  latents: jax.Array  # What the decoder takes.
  losses: dict[str, jax.Array] = flax.struct.field(default_factory=dict)
  metrics: dict[str, jax.Array] = flax.struct.field(default_factory=dict)
  # KL(q(z | x) || prior) in nats per example, for a bottleneck with a prior (so the model's
  # negative ELBO is defined); None for a continuous deterministic latent, which has none.
  rate: jax.Array | None = None
  codes: jax.Array | None = None  # Code index per latent position, ints [batch, h, w].


class Bottleneck(nn.Module):
  """Maps encoder features [N, h, w, C] to what the decoder takes, with its loss terms."""
  # False when the latents are random draws (then no corruption can wrap the model).
  deterministic: ClassVar[bool] = True
  can_sample: ClassVar[bool] = False  # It implements `sample_prior`.
  rng_streams: ClassVar[tuple[str, ...]] = ()

  @property
  def samples_at_training_size(self) -> bool:
    """True when its prior is over the training size's latent grid only (can_sample)."""
    return False

  @property
  def num_codes(self) -> int:
    """Size of the discrete code book whose indices `codes` holds; 0 for none."""
    return 0

  def __call__(self, features: jax.Array, train: bool, image_dims: int) -> BottleneckOutput:
    """`image_dims`: values per image (H * W * C), to give loss terms in nats per image
    dimension, like the likelihood's."""
    raise NotImplementedError

  def latents(self, features: jax.Array) -> jax.Array:
    """The deterministic decoder input for evaluation and inference (a posterior mean, the
    quantized vectors)."""
    return self(features, False, 1).latents

  def code_latents(self, codes: jax.Array) -> jax.Array:
    """What the decoder takes for code indices [N, h, w] (a bottleneck with `num_codes`): the
    latents `latents` gives for features whose codes they are. A prior over the codes decodes
    its samples through this."""
    raise NotImplementedError(f'{type(self).__name__} has no discrete codes')

  def sample_prior(self, num: int, height: int, width: int) -> jax.Array:
    """`num` decoder inputs [num, height, width, ...] drawn from the prior (can_sample)."""
    raise NotImplementedError

  def posterior_sample(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A draw z ~ q(z | x) and log q(z | x) - log p(z) at it, summed per example in nats
    ([batch]), for importance weighting (can_sample)."""
    raise NotImplementedError


class Likelihood(nn.Module):
  """The reconstruction loss: what the decoder's outputs mean as a distribution over pixels."""
  # A normalized distribution over the 256 levels of 8-bit pixels, so its negative log
  # likelihood is in bits per dimension, and the model's negative ELBO too.
  proper: ClassVar[bool] = False
  # The one input range it can serve (None: any inside output_range).
  exact_input_range: ClassVar[tuple[float, float] | None] = None
  output_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

  def decoder_channels(self, image_channels: int) -> int:
    """How many output channels the decoder gives it (by default one per image channel)."""
    return image_channels

  def mean(self, outputs: jax.Array) -> jax.Array:
    """The reconstruction in `output_range`, from the decoder's outputs."""
    raise NotImplementedError

  def __call__(self, outputs: jax.Array,
               images: jax.Array) -> tuple[dict[str, jax.Array], jax.Array | None]:
    """Loss terms per example, and -log p(images | outputs) in nats per example (None unless
    `proper`)."""
    raise NotImplementedError


class Corruption(nn.Module):
  """Corrupts inputs (denoising): called as corruption(images, value_range) -> images."""
  rng_streams: ClassVar[tuple[str, ...]] = ('noise',)

  def __call__(self, images: jax.Array, value_range: tuple[float, float]) -> jax.Array:
    raise NotImplementedError


def part_config(parts_registry: registry.Registry, name: str, filled_in: tuple[str, ...] = (),
                **settings) -> ml_collections.ConfigDict:
  """A part's config: its name and every setting, at its default unless given; `filled_in`
  names fields its user fills in rather than the config (a prior's num_codes, grid, dtype).

  Every key is present, so `--config.model.<part>.<setting>=...` can override any of them;
  a None default becomes a typed placeholder (it takes a value of the annotated type).
  """
  cls = parts_registry.get(name)
  hints = typing.get_type_hints(cls)
  config = ml_collections.ConfigDict({'name': name})
  for field in dataclasses.fields(cls):
    if field.name in registry.NOT_SETTINGS or field.name in filled_in:
      continue
    value = settings.pop(field.name, field.default)
    if value is None:
      kinds = [t for t in typing.get_args(hints[field.name]) if t is not type(None)]
      value = ml_collections.config_dict.placeholder(kinds[0] if kinds else object)
    config[field.name] = value
  if settings:
    raise ValueError(f'{parts_registry.what} {name!r} has no setting {", ".join(settings)}')
  return config
