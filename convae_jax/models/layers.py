"""Layers shared by the models, in plain Flax.

Each composite layer here (a conv and what follows it) is a subclass of the Flax module it
extends, with that module's parameters under the same names, and is one module so that a
backend may compute it as a whole: `convae_jax.cpu` puts in CPU kernels for some of them
when the backend is a CPU. The models compute the same function either way.
"""
import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_default_init(fan_in: int) -> Callable:
  """PyTorch's default Conv/ConvTranspose init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  Used so that a model ported from PyTorch also trains like it, not only computes like it.
  """
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def identity(x: jax.Array) -> jax.Array:
  return x


class PooledConv(nn.Conv):
  """`nn.Conv`, then `activation`, then max pooling over non-overlapping `window` x `window`
  blocks (stride `window`): a layer of the seed's encoder."""
  window: int = 2
  activation: Callable = identity

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.activation(super().__call__(x))
    return nn.max_pool(y, (self.window, self.window), strides=(self.window, self.window))


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
  """NHWC images with each pixel repeated `factor` times along H and W."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class UpsampleConv(nn.Conv):
  """2x nearest-neighbour upsampling, then `nn.Conv`."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return super().__call__(upsample_nearest(x, 2))


class ActivatedGroupNorm(nn.GroupNorm):
  """`nn.GroupNorm`, then `activation`."""
  activation: Callable = identity

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self.activation(super().__call__(x))


def cast_floats(tree, dtype):
  """`tree` with its floating-point leaves cast to `dtype` (the others as they are)."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def computing_in(module: nn.Module, dtype, initializing: bool) -> nn.Module:
  """`module` (unbound, not yet named) computing in `dtype`: it reads its float32 parameters
  cast to `dtype`, so every layer in it computes in `dtype` given inputs in `dtype`, while
  the parameters (and their gradients) stay float32 under the same names. Other collections
  (batch statistics) are not cast. While `initializing` it is `module` itself: parameters
  are created in float32 exactly as without it.
  """
  if initializing or jnp.dtype(dtype) == jnp.float32:
    return module
  mapped = nn.map_variables(type(module), 'params', trans_in_fn=lambda v: cast_floats(v, dtype))
  return mapped(**{f.name: getattr(module, f.name) for f in dataclasses.fields(module)
                   if f.init and f.name not in ('parent', 'name')})


def device_mean(x: jax.Array, axis_name: str | None) -> jax.Array:
  """The mean of `x` over the devices of the mapped axis `axis_name` (None: x itself)."""
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def device_concat(x: jax.Array, axis_name: str | None) -> jax.Array:
  """`x` of every device of `axis_name`, concatenated along axis 0 in device order (the
  global batch's); None: x itself."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def projection(features: int, name: str | None = None) -> nn.Dense:
  """A 1x1 convolution (dense over channels) with PyTorch's default kernel scale."""
  return nn.Dense(features, kernel_init=nn.initializers.variance_scaling(
      1.0 / 3.0, 'fan_in', 'uniform'), name=name)
