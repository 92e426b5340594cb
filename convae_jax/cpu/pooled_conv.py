"""`layers.PooledConv` on XLA:CPU: a conv, then max pooling, with the pooling's gradient as
one elementwise select and, for convs of few input channels, the conv as a sum of taps."""
import functools

import jax
import jax.numpy as jnp

from convae_jax.cpu import conv_util
from convae_jax.models import layers

# Up to this many input channels (an image) the conv's forward pass is summed tap by tap.
TAP_SUM_MAX_IN_FEATURES = 4
# Non-decreasing activations: for them, pooling first is the same function on fewer values.
NON_DECREASING = (layers.identity, jax.nn.selu, jax.nn.relu, jax.nn.elu, jax.nn.sigmoid,
                  jnp.tanh)


def applies(module) -> bool:
  return (conv_util.is_plain_square_conv(module) and
          any(module.activation is f for f in NON_DECREASING))


def pooled_conv(module, x: jax.Array) -> jax.Array:
  """activation(max_pool(conv(x) + bias)): PooledConv's function, pooled before the
  activation (the same values, as the activation does not decrease), with the bias added
  after the pooling (see `max_pool`)."""
  kernel, bias, x = conv_util.conv_parameters(module, x)
  padding = conv_util.symmetric_padding(module)
  few_channels = x.shape[-1] <= TAP_SUM_MAX_IN_FEATURES
  y = tap_sum_conv(x, kernel, padding) if few_channels else conv_util.lax_conv(x, kernel,
                                                                               padding)
  return module.activation(max_pool(y, module.window, bias=bias))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tap_sum_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """A stride-1 conv with few input channels as a sum of k*k*C_in shifted, scaled copies.

  XLA:CPU runs a convolution with 3 input channels far below its matrix-product speed; these
  elementwise multiply-adds fuse into one loop. The backward pass is the convolution's own
  (its kernel gradient is an ordinary large contraction).
  """
  k = kernel.shape[0]
  _, h, w, c = x.shape
  out_h, out_w = h + 2 * padding - k + 1, w + 2 * padding - k + 1
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  taps = [x[:, a:a + out_h, b:b + out_w, i:i + 1] * kernel[a, b, i]
          for a in range(k) for b in range(k) for i in range(c)]
  return functools.reduce(jnp.add, taps)


def _tap_sum_conv_fwd(x, kernel, padding):
  return tap_sum_conv(x, kernel, padding), (x, kernel)


def _tap_sum_conv_bwd(padding, residuals, grad):
  x, kernel = residuals
  return jax.vjp(lambda x, kernel: conv_util.lax_conv(x, kernel, padding), x, kernel)[1](grad)


tap_sum_conv.defvjp(_tap_sum_conv_fwd, _tap_sum_conv_bwd)


def _pool_windows(x: jax.Array, window: int) -> list[jax.Array]:
  """The window*window strided views of x, one per position in the window, row-major."""
  n, h, w, c = x.shape
  if h % window or w % window:
    raise ValueError(f'max_pool needs H and W divisible by {window}, got {h}x{w}')
  x = x.reshape(n, h // window, window, w // window, window, c)
  return [x[:, :, a, :, b, :] for a in range(window) for b in range(window)]


def max_pool(x: jax.Array, window: int = 2, bias: jax.Array | None = None) -> jax.Array:
  """Non-overlapping max pooling (window = stride) on NHWC, of `x + bias` if a bias is given.

  The function and gradient of `nn.max_pool(x + bias, (w, w), (w, w))` and of PyTorch's
  MaxPool2d (a tie sends the gradient to the first maximum in the window, row-major).
  nn.max_pool's gradient is a select-and-scatter, slow on XLA:CPU; here the forward pass is
  an elementwise max over the window's strided views, which fuses with the layer before it;
  it saves only the winner's position, and the backward pass is one elementwise select.

  `bias` (per channel; the bias of the layer before) is added after the max, bitwise the same
  values (rounding is monotonic, so max(a + b, c + b) == max(a, c) + b). Its gradient is then
  a sum over the pooled gradient, not over the full-size routed one.
  """
  return _max_pool(x, bias, window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _max_pool(x, bias, window):
  pooled = functools.reduce(jnp.maximum, _pool_windows(x, window))
  return pooled if bias is None else pooled + bias


def _max_pool_fwd(x, bias, window):
  # The winner is taken among the biased values, so that ties are PyTorch's ties.
  views = _pool_windows(x, window)
  views = views if bias is None else [view + bias for view in views]
  pooled = functools.reduce(jnp.maximum, views)
  winner = jnp.full(pooled.shape, len(views) - 1, x.dtype)  # float: compares vectorize.
  for position in reversed(range(len(views) - 1)):  # The first maximum wins.
    winner = jnp.where(views[position] == pooled, float(position), winner)
  # Divided by an exact 1 so that XLA stores it once (else the backward pass recomputes it,
  # and the layer before the pooling with it, per output position); the denominator comes
  # from `pooled`: a non-finite `pooled` makes the winner NaN, so that window's gradient is 0.
  return pooled, (winner / (pooled - pooled + 1.0), bias)


def _max_pool_bwd(window, residuals, grad):
  winner, bias = residuals  # The bias only tells whether it has a gradient.
  n, h, w, c = grad.shape
  position = jnp.arange(window * window, dtype=grad.dtype).reshape(1, 1, window, 1, window, 1)
  # [n, h, window(a), w, window(b), c]: window position a * window + b gets the gradient.
  routed = jnp.where(winner[:, :, None, :, None, :] == position, grad[:, :, None, :, None, :],
                     0.0)
  bias_grad = None if bias is None else grad.sum((0, 1, 2))
  return routed.reshape(n, h * window, w * window, c), bias_grad


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
