"""The contract every autoencoder variant follows, so the trainer never changes for one.

A variant is a Flax linen module that subclasses `Autoencoder` and is registered by name
(`models.registry.register`). Calling it on a batch of images returns an `AutoencoderOutput`:

* `reconstruction`: same shape as the input, inside `output_range`;
* `losses`: named loss terms, each a per-example array of shape [batch]. The training
  objective is the sum over terms of their batch means (weights belong inside the model);
* `metrics`: more named per-example values to log (same shape rule).

Per-example values let evaluation mask the padding of its last batch. A variant may also
override `pictures(images)` to add images to every evaluation (prior samples, interpolations,
histograms), and declare class attributes: `output_range`, `num_downsamplings`,
`rng_streams` (PRNG streams it draws from, e.g. 'sample'), `deterministic` and `can_sample`
(it implements `sample` and `interpolate`; `convae_jax.inference` offers them only then).
`latents(images)` is the latent that `decode` maps to the evaluation reconstruction
(`encode(images, train=False)` unless overridden); `convae_jax.inference` encodes with it.
Variables outside 'params' (batch statistics, EMA codebooks, counters) are updated in
training by declaring them with `self.variable(collection, ...)`; the trainer makes every such
collection mutable, averages it across devices and checkpoints it.
"""
import numbers
from typing import ClassVar, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class AutoencoderOutput:
  reconstruction: jax.Array
  losses: dict[str, jax.Array]
  metrics: dict[str, jax.Array] = flax.struct.field(default_factory=dict)


def per_example_mse(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error of each example over its pixels and channels: shape [batch]."""
  return jnp.mean(jnp.square(reconstruction - target), axis=tuple(range(1, target.ndim)))


def check_widths(model: str, field: str, widths) -> None:
  """Raises ValueError unless `widths` is one or more positive integers (layer widths)."""
  values = tuple(widths) if isinstance(widths, Sequence) else ()
  if not values or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1
                           for w in values):
    raise ValueError(f'{model}: {field}={widths!r} must be one or more positive integer widths, '
                     'one per stride-2 stage')


class Autoencoder(nn.Module):
  """Base class: encode -> decode, trained with the MSE against the input.

  Subclasses define `encode(images, train)` and `decode(latents, train)` (submodules made
  in `setup`) and may override `__call__` to add loss terms (a KL, a commitment loss, ...).
  """

  # The range of pixel values the decoder's output activation can produce. The input
  # pipeline scales pixels into `config.input_range`, which must lie inside it.
  output_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
  # How many times encode() halves each spatial side: H and W must divide by 2**this.
  num_downsamplings: ClassVar[int] = 0
  # Names of the PRNG streams the model draws from (the trainer passes a key for each).
  rng_streams: ClassVar[tuple[str, ...]] = ()
  # False when the output depends on random draws (a VAE): such models can't be wrapped by
  # variants that need a deterministic map (denoising).
  deterministic: ClassVar[bool] = True
  # True when the model implements `sample` and `interpolate` (a VAE): generation from a prior.
  can_sample: ClassVar[bool] = False

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

  def sample(self, num: int, height: int, width: int) -> jax.Array:
    """`num` images [num, height, width, C] generated from the prior, in `output_range`.

    Only for models with `can_sample = True`; draws from the model's `rng_streams`.
    """
    raise NotImplementedError(f'{type(self).__name__} cannot sample (can_sample = False)')

  def interpolate(self, start: jax.Array, end: jax.Array, steps: int = 8) -> jax.Array:
    """For each pair of images [N, H, W, C], `steps` decoded images from start to end.

    Returns [N * steps, H, W, C] in `output_range`. Only for models with `can_sample = True`.
    """
    raise NotImplementedError(f'{type(self).__name__} cannot interpolate (can_sample = False)')

  def pictures(self, images: jax.Array) -> dict[str, jax.Array]:
    """Extra pictures for each evaluation, name -> images [N, H, W, C] in [0, 1].

    `images` are fixed eval images (in the input range). The trainer already shows their
    reconstructions; override to add e.g. prior samples or a code-usage histogram.
    """
    del images
    return {}

  def __call__(self, images: jax.Array, *, train: bool = False) -> AutoencoderOutput:
    reconstruction = self.decode(self.encode(images, train), train)
    return AutoencoderOutput(reconstruction=reconstruction,
                             losses={'mse': per_example_mse(reconstruction, images)})
