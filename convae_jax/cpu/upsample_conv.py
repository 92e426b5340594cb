"""`layers.UpsampleConv` (2x nearest upsampling, then a 3x3 conv) on XLA:CPU: four 2x2 convs
of the low-resolution input, one per output phase, interleaved."""
import jax
import jax.numpy as jnp

from convae_jax.cpu import conv_util

# After 2x nearest upsampling, output row 2i + a of a 3x3 conv (padding 1) reads input rows
# i - 1 + r, r in {0, 1}, for phase a = 0, and i + r for a = 1, with kernel rows summed:
# PHASE_ROWS[a, r, u] says whether the 3x3 kernel's row u adds to the 2x2 kernel's row r.
PHASE_ROWS = ((((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1))))


def applies(module) -> bool:
  return (conv_util.is_plain_square_conv(module) and
          conv_util.pairs(module.kernel_size) == (3, 3) and
          conv_util.symmetric_padding(module) == 1)


def upsample_conv(module, x: jax.Array) -> jax.Array:
  kernel, bias, x = conv_util.conv_parameters(module, x)
  return phase_conv(x, kernel) + bias


def phase_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`conv3x3(nearest_upsample_2x(x), kernel)` with padding 1 (NHWC, kernel HWIO), computed
  as four 2x2 convs of `x` itself, one per output phase (a, b), interleaved.

  The same function with 4/9 of the multiply-adds and no upsampled image (whose transpose,
  for the kernel gradient, XLA:CPU spends long on).
  """
  n, h, w, _ = x.shape
  rows = jnp.asarray(PHASE_ROWS, kernel.dtype)
  # Exact sums of kernel taps (HIGHEST: no bfloat16 passes on an accelerator).
  phase_kernels = jnp.einsum('aru,bsv,uvio->abrsio', rows, rows, kernel,
                             precision=jax.lax.Precision.HIGHEST)
  phases = [[jax.lax.conv_general_dilated(x, phase_kernels[a, b], (1, 1),
                                          ((1 - a, a), (1 - b, b)),
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
             for b in range(2)] for a in range(2)]
  # [n, h, a, w, b, c] -> [n, 2h, 2w, c]: output pixel (2i + a, 2j + b) is phase (a, b)'s (i, j).
  out = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
  return out.reshape(n, 2 * h, 2 * w, kernel.shape[-1])
