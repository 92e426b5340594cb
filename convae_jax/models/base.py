"""The contract every autoencoder variant follows, so the trainer never changes for one.

A variant is a Flax linen module that subclasses `Autoencoder` and is registered by name
(`models.registry.register`). Calling it on a batch of images returns an `AutoencoderOutput`:

* `reconstruction`: same shape as the input, inside `output_range`;
* `losses`: named loss terms, each a per-example array of shape [batch]. The training
  objective is the sum over terms of their batch means (weights belong inside the model);
* `metrics`: more named per-example values to log (same shape rule);
* `codes` (optional): the discrete code index at each latent position, ints [batch, ...], for
  a model with `num_codes` > 0; the trainer counts their use over the whole eval split.

Per-example values let evaluation mask the padding of its last batch. A variant may also
override `pictures(images)` to add images to every evaluation (prior samples,
interpolations), and declares what it is (see `Autoencoder`): `output_range`,
`num_downsamplings`, `rng_streams` (PRNG streams it draws from, e.g. 'sample'),
`image_channels`, `deterministic`, `can_sample` (it implements `sample` and `interpolate`;
`convae_jax.inference` offers them only then; `samples_at_training_size` when `sample` takes
that size only), `num_codes` and `exact_input_range`.
Field checks use `require`.
`latents(images)` is the latent that `decode` maps to the evaluation reconstruction
(`encode(images, train=False)` unless overridden); `convae_jax.inference` encodes with it.
A model with codes gives them with `codes(images)` and decodes them with `decode_codes`,
which a prior over its codes samples through (models.priors).
Variables outside 'params' (batch statistics, EMA codebooks, counters) are updated in
training by declaring them with `self.variable(collection, ...)`; the trainer makes every such
collection mutable, averages it across devices and checkpoints it.
"""
import numbers
from typing import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class AutoencoderOutput:
  reconstruction: jax.Array
  losses: dict[str, jax.Array]
  metrics: dict[str, jax.Array] = flax.struct.field(default_factory=dict)
  codes: jax.Array | None = None


def per_example_mse(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error of each example over its pixels and channels: shape [batch]."""
  return jnp.mean(jnp.square(reconstruction - target), axis=tuple(range(1, target.ndim)))


def is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require(model: str, field: str, value, ok: bool, rule: str) -> None:
  """A model's (or part's) check of one of its fields: ValueError('MODEL: FIELD=VALUE must
  RULE')."""
  if not ok:
    raise ValueError(f'{model}: {field}={value!r} must {rule}')


def require_one_of(model: str, field: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f'{model}: {field}={value!r}; allowed: {", ".join(allowed)}')


def check_widths(model: str, field: str, widths) -> None:
  """Raises ValueError unless `widths` is one or more positive integers (layer widths)."""
  values = tuple(widths) if isinstance(widths, Sequence) else ()
  require(model, field, widths, bool(values) and all(is_int(w) and w >= 1 for w in values),
          'be one or more positive integer widths, one per stride-2 stage')


class Autoencoder(nn.Module):
  """Base class: encode -> decode, trained with the MSE against the input.

  Subclasses define `encode(images, train)` and `decode(latents, train)` (submodules made
  in `setup`) and may override `__call__` to add loss terms (a KL, a commitment loss, ...).
  """

  # What a variant declares: properties (a subclass may override each with a plain class
  # attribute).

  @property
  def deterministic(self) -> bool:
    """False when the output depends on random draws (a VAE's sampled latent)."""
    return True

  @property
  def can_sample(self) -> bool:
    """True when the model implements `sample` and `interpolate` (generation from a prior)."""
    return False

  @property
  def samples_at_training_size(self) -> bool:
    """True when `sample` takes the training images' size only (a prior over its grid)."""
    return False

  @property
  def num_codes(self) -> int:
    """The size of its discrete code book (0: the latent is not discrete); see `codes`."""
    return 0

  @property
  def has_importance_weights(self) -> bool:
    """True when the model implements `log_importance_weight`: a latent with a prior and a
    posterior, and a likelihood that is a distribution over pixel values."""
    return False

  @property
  def exact_input_range(self) -> tuple[float, float] | None:
    """The one config.input_range the model can serve (a likelihood over the 256 levels of
    [0, 1]), or None for any range inside `output_range`."""
    return None

  @property
  def label(self) -> str | None:
    """What the model is, in one word for messages (None: its registered name says it)."""
    return None

  @property
  def output_range(self) -> tuple[float, float]:
    """The pixel values the decoder's output can take; config.input_range must lie inside."""
    return (0.0, 1.0)

  @property
  def num_downsamplings(self) -> int:
    """How many times encode() halves each spatial side: H and W divide by 2**this."""
    raise NotImplementedError

  @property
  def output_layer(self) -> tuple[str, ...]:
    """The path in 'params' of the decoder's last kernel, at which an adaptive loss weight
    (VQGAN's) compares gradient norms; a model without one cannot take such a term."""
    raise NotImplementedError(f'{type(self).__name__} does not name its output layer')

  @property
  def rng_streams(self) -> tuple[str, ...]:
    """The PRNG streams the model draws from (the trainer passes a key for each)."""
    return ()

  @property
  def image_channels(self) -> int:
    """Channels of the images it takes and gives (a field of each variant)."""
    raise NotImplementedError

  def encode(self, images: jax.Array, train: bool) -> jax.Array:
    raise NotImplementedError

  def decode(self, latents: jax.Array, train: bool) -> jax.Array:
    raise NotImplementedError

  def latents(self, images: jax.Array) -> jax.Array:
    """The latent that `decode(latents, train=False)` maps to the evaluation reconstruction.

    `encode` in evaluation mode by default; override when the decoder takes something else
    (e.g. quantized codebook vectors). `convae_jax.inference` encodes and decodes with it.
    """
    return self.encode(images, train=False)

  def codes(self, images: jax.Array) -> jax.Array:
    """The code index at each latent position of `images`, ints [N, h, w] (a model with
    `num_codes` > 0): what a prior over codes (models.priors) is trained on."""
    return self(images, train=False).codes

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """Images [N, H, W, C] in `output_range` decoded from code indices [N, h, w], as from
    the codes of `codes(images)` (a model with `num_codes` > 0)."""
    raise NotImplementedError(f'{type(self).__name__} cannot decode codes')

  def sample(self, num: int, height: int, width: int) -> jax.Array:
    """`num` images [num, height, width, C] generated from the prior, in `output_range`.

    Only for models whose `can_sample` is True; draws from the model's `rng_streams`.
    """
    raise NotImplementedError(f'{type(self).__name__} cannot sample (can_sample is False)')

  def log_importance_weight(self, images: jax.Array) -> jax.Array:
    """log p(x | z) + log p(z) - log q(z | x) at one draw z ~ q(z | x), in nats [N]: the
    importance-weighted bound (Burda et al. 2016) averages exp of it over draws, and its mean
    over draws is minus the negative ELBO. Only where `has_importance_weights` is True."""
    raise NotImplementedError(f'{type(self).__name__} has no importance weights')

  def interpolate(self, start: jax.Array, end: jax.Array, steps: int = 8) -> jax.Array:
    """For each pair of images [N, H, W, C], `steps` decoded images from start to end.

    Returns [N * steps, H, W, C] in `output_range`. Only for models whose `can_sample` is True.
    """
    raise NotImplementedError(f'{type(self).__name__} cannot interpolate (can_sample is False)')

  def pictures(self, images: jax.Array) -> dict[str, jax.Array]:
    """Extra pictures for each evaluation, name -> images [N, H, W, C] in [0, 1].

    `images` are fixed eval images (in the input range). The trainer already shows their
    reconstructions (and, for a model with codes, their usage over the split); override to
    add e.g. prior samples.
    """
    del images
    return {}

  def __call__(self, images: jax.Array, *, train: bool = False) -> AutoencoderOutput:
    reconstruction = self.decode(self.encode(images, train), train)
    return AutoencoderOutput(reconstruction=reconstruction,
                             losses={'mse': per_example_mse(reconstruction, images)})
