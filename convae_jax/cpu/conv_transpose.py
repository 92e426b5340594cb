"""`nn.ConvTranspose` whose kernel equals its stride (no overlap), on XLA:CPU: one matrix
product and a depth-to-space."""
import jax
import jax.numpy as jnp

from convae_jax.cpu import conv_util


def applies(module) -> bool:
  k = conv_util.pairs(module.kernel_size)
  return (len(k) == 2 and conv_util.pairs(module.strides) == k and module.padding == 'VALID'
          and not module.transpose_kernel and module.use_bias and module.mask is None and
          conv_util.pairs(module.kernel_dilation) == (1, 1))


def conv_transpose(module, x: jax.Array) -> jax.Array:
  """Each input pixel paints its own k x k output patch: out[k*i + a, k*j + b, o] =
  sum_c x[i, j, c] * kernel[k-1-a, k-1-b, c, o] + bias[o], as lax.conv_transpose computes
  with an unflipped kernel."""
  n, h, w, c = x.shape
  ka, kb = conv_util.pairs(module.kernel_size)
  kernel, bias, x = conv_util.conv_parameters(module, x)
  kernel = kernel[::-1, ::-1]
  # A plain 2-D matrix product: XLA:CPU lays an einsum's output out as (a, b, o) x (n, h, w)
  # and then transposes it twice; this keeps pixels major and pays one depth-to-space.
  patches = jnp.dot(x.reshape(n * h * w, c),
                    kernel.transpose(2, 0, 1, 3).reshape(c, ka * kb * module.features))
  patches = patches.reshape(n, h, w, ka, kb, module.features).transpose(0, 1, 3, 2, 4, 5)
  return patches.reshape(n, h * ka, w * kb, module.features) + bias
