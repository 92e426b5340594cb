"""Layers shared by the models, written in the forms XLA compiles well on every backend."""
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


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
  """Non-overlapping max pooling (window = stride) on NHWC, as a reshape and a max.

  The same function as `nn.max_pool(x, (w, w), (w, w))`, but its gradient avoids XLA's
  select-and-scatter, which is slow on CPU.
  """
  n, h, w, c = x.shape
  if h % window or w % window:
    raise ValueError(f'max_pool needs H and W divisible by {window}, got {h}x{w}')
  return jnp.max(x.reshape(n, h // window, window, w // window, window, c), axis=(2, 4))


def torch_conv(features: int, in_features: int, kernel_size: int = 3, padding: int = 1,
               name: str | None = None) -> nn.Conv:
  """A stride-1 conv with PyTorch Conv2d's padding arithmetic and default init."""
  fan_in = in_features * kernel_size**2
  return nn.Conv(features, (kernel_size, kernel_size), padding=padding, name=name,
                 kernel_init=torch_default_init(fan_in), bias_init=torch_default_init(fan_in))


class PatchConvTranspose(nn.Module):
  """Transposed convolution whose kernel equals its stride (PyTorch ConvTranspose2d(k, stride=k)).

  Each input pixel paints its own non-overlapping k x k output patch, so the layer is one
  matrix product followed by depth-to-space. Kernel layout [k, k, in, out], not flipped:
  out[k*i + a, k*j + b, o] = sum_c x[i, j, c] * kernel[a, b, c, o] + bias[o].
  """
  features: int
  stride: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    k = self.stride
    # PyTorch computes ConvTranspose2d's fan_in from weight dim 1, which is the *output* width.
    fan_in = self.features * k * k
    kernel = self.param('kernel', torch_default_init(fan_in), (k, k, c, self.features))
    bias = self.param('bias', torch_default_init(fan_in), (self.features,))
    y = jnp.einsum('nhwc,abco->nhawbo', x, kernel)
    return y.reshape(n, h * k, w * k, self.features) + bias
