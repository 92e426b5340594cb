"""`fsq`: finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
Made Simple").

A 1x1 projection maps the encoder's features to len(levels) channels; channel i is bounded
to (levels[i] - 1) / 2 on either side by a tanh, rounded to the nearest integer (the gradient
passes the rounding unchanged, straight-through) and scaled into [-1, 1]; a 1x1 projection
maps the result back to the encoder's channel count for the decoder. The grid has
prod(levels) points (the implied codebook: (8, 8, 8) = 512 codes); there is no codebook and
no codebook loss. `codes` is the index of each position's grid point.

Optional (`entropy_weight` > 0): the entropy term of lookup-free quantization (Yu et al.
2023, MAGVIT-v2), which spreads the batch over the grid: with p(k | x) a softmax over the
grid points of -|bound(z) - point_k|^2 / `entropy_temperature` (in grid steps), the loss
entropy = weight * (mean over positions of H(p(. | x)) - H(mean over the global batch of
p(. | x))), low when each position is sure of its point and the batch uses many points (with
config.micro_batches > 1, each part's batch). It costs positions x prod(levels) distances a
step. With `entropy_decay_steps` > 0 the weight falls linearly to 0 over that many training
steps: the term spreads the codes while they settle, then leaves the reconstruction alone.
"""
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from convae_jax.models import base, layers, parts


def round_straight_through(x: jax.Array) -> jax.Array:
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


class Grid:
  """The FSQ grid of `levels`: bounding, quantizing and code indices (no parameters)."""

  def __init__(self, levels: Sequence[int]):
    self.levels = np.asarray(levels, np.int32)
    self.half_width = (self.levels // 2).astype(np.float32)
    # Mixed-radix place values of the digits (first channel least significant).
    self.basis = np.concatenate([[1], np.cumprod(self.levels[:-1])]).astype(np.int32)
    self.size = int(np.prod(self.levels))

  def bound(self, z: jax.Array) -> jax.Array:
    """Maps each channel into an interval whose integers are its `levels` grid values."""
    epsilon = 1e-3
    half = (self.levels - 1) * (1.0 - epsilon) / 2.0
    offset = np.where(self.levels % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half)
    return jnp.tanh(z + shift) * half - offset

  def quantize(self, z: jax.Array) -> jax.Array:
    """Grid points scaled into [-1, 1], with straight-through gradients."""
    return round_straight_through(self.bound(z)) / self.half_width

  def indices(self, quantized: jax.Array) -> jax.Array:
    """The code index of each grid point [..., len(levels)] -> [...]."""
    digits = jnp.round(quantized * self.half_width + self.half_width).astype(jnp.int32)
    return jnp.sum(digits * self.basis, axis=-1)

  def points(self, indices: jax.Array) -> jax.Array:
    """The grid point (in [-1, 1]) of each code index: the inverse of `indices`."""
    digits = (indices[..., None] // self.basis) % self.levels
    return (digits - self.half_width) / self.half_width


def entropy_term(grid: Grid, bounded: jax.Array, temperature: float,
                 axis_name: str | None = None) -> jax.Array:
  """Mean per-position entropy minus the global batch's entropy, in nats (a scalar), of the
  soft assignments of `bounded` values [n, len(levels)] (in grid steps) to the grid's points;
the batch is reduced over the devices of `axis_name`."""
  points = grid.points(jnp.arange(grid.size)) * grid.half_width
  distances = (jnp.sum(bounded**2, axis=1, keepdims=True) - 2.0 * bounded @ points.T +
               jnp.sum(points**2, axis=1)[None, :])
  log_p = jax.nn.log_softmax(-distances / temperature, axis=1)
  p = jnp.exp(log_p)
  per_position = -jnp.mean(jnp.sum(p * log_p, axis=1))
  batch_p = layers.device_mean(jnp.mean(p, axis=0), axis_name)
  batch = -jnp.sum(batch_p * jnp.log(jnp.maximum(batch_p, 1e-12)))
  return per_position - batch


@parts.BOTTLENECKS.register('fsq')
class FiniteScalarQuantizer(parts.Bottleneck):
  levels: Sequence[int] = (8, 8, 8)
  entropy_weight: float = 0.0
  entropy_temperature: float = 0.5
  entropy_decay_steps: int = 0
  # The mapped axis of the data-parallel devices (set by the train step, as for Flax's
  # BatchNorm): the entropy term's batch is the global batch. None: one device.
  axis_name: str | None = None

  def __post_init__(self):
    what = "model.bottleneck 'fsq'"
    levels = tuple(self.levels) if isinstance(self.levels, (tuple, list)) else ()
    base.require(what, 'levels', self.levels,
                 bool(levels) and all(base.is_int(l) and l >= 2 for l in levels),
                 'be one or more integers >= 2, e.g. (8, 8, 8) for 512 codes')
    base.require(what, 'entropy_weight', self.entropy_weight, self.entropy_weight >= 0,
                 'be >= 0 (0 = off)')
    base.require(what, 'entropy_temperature', self.entropy_temperature,
                 self.entropy_temperature > 0, 'be > 0')
    base.require(what, 'entropy_decay_steps', self.entropy_decay_steps,
                 base.is_int(self.entropy_decay_steps) and self.entropy_decay_steps >= 0,
                 'be an integer >= 0 (0 = a constant weight)')
    super().__post_init__()

  @property
  def num_codes(self) -> int:
    return math.prod(self.levels)

  def current_entropy_weight(self, train: bool) -> jax.Array | float:
    """The entropy term's weight at this step (counting the step when `train`)."""
    if not self.entropy_decay_steps:
      return self.entropy_weight
    # Training steps seen (float so the trainer's device mean keeps it).
    steps_seen = self.variable('counters', 'steps_seen', jnp.zeros, (), jnp.float32)
    weight = self.entropy_weight * jnp.maximum(
        0.0, 1.0 - steps_seen.value / self.entropy_decay_steps)
    if train and not self.is_initializing():
      steps_seen.value += 1.0
    return weight

  def code_latents(self, codes):
    """The grid points of `codes` [N, h, w], projected to the encoder's channels."""
    projection = self.variables['params']['from_code']
    return Grid(self.levels).points(codes) @ projection['kernel'] + projection['bias']

  @nn.compact
  def __call__(self, features, train, image_dims):
    del image_dims
    grid = Grid(self.levels)
    z = layers.projection(len(self.levels), name='to_code')(features)
    quantized = grid.quantize(z)
    codes = grid.indices(quantized)
    positions = math.prod(codes.shape[1:])
    latents = layers.projection(features.shape[-1], name='from_code')(quantized)
    losses = {}
    if self.entropy_weight:
      term = entropy_term(grid, grid.bound(z).reshape(-1, len(self.levels)),
                          self.entropy_temperature, self.axis_name)
      losses['entropy'] = jnp.full(codes.shape[:1], self.current_entropy_weight(train) * term)
    return parts.BottleneckOutput(
        latents=latents, codes=codes, losses=losses,
        # A deterministic code under a uniform prior over the grid: log(size) nats a position.
        rate=jnp.full(codes.shape[:1], positions * math.log(grid.size)))
