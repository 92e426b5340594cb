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


class PatchConv(nn.Module):
  """Stride-1 convolution as one matrix product over k x k patches (im2col).

  Same function and parameters as `nn.Conv(features, (k, k), padding=padding)` (kernel
  [k, k, in, out], bias [out]). With few input channels XLA:CPU's convolution runs far below
  the matrix-product speed; gathering the k*k shifted views into the channel axis turns the
  layer into one [N*H*W, k*k*in] x [k*k*in, out] product, forward and backward.
  """
  features: int
  kernel_size: int = 3
  padding: int = 1
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    k, p = self.kernel_size, self.padding
    kernel = self.param('kernel', self.kernel_init, (k, k, c, self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    if k == 1 and p == 0:
      return jnp.dot(x, kernel[0, 0]) + bias
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out_h, out_w = h + 2 * p - k + 1, w + 2 * p - k + 1
    # Channel order (a, b, c) matches kernel.reshape(k * k * c, out).
    patches = jnp.concatenate([x[:, a:a + out_h, b:b + out_w, :]
                               for a in range(k) for b in range(k)], axis=-1)
    return jnp.dot(patches, kernel.reshape(k * k * c, self.features)) + bias


def torch_conv(features: int, in_features: int, kernel_size: int = 3, padding: int = 1,
               name: str | None = None) -> nn.Module:
  """A stride-1 conv with PyTorch Conv2d's padding arithmetic and default init."""
  fan_in = in_features * kernel_size**2
  return PatchConv(features, kernel_size, padding, name=name,
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
