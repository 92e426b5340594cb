"""What the CPU conv kernels share: which `nn.Conv` settings they take, and the module's
parameters read as `nn.Conv` reads them."""
import jax
from flax.linen import linear


def pairs(value, default=1) -> tuple[int, ...]:
  value = default if value is None else value
  return (value, value) if isinstance(value, int) else tuple(value)


def symmetric_padding(module) -> int | None:
  """The padding p of a conv padded by p on every side, else None."""
  padding = linear.canonicalize_padding(module.padding, 2)
  if isinstance(padding, str):
    k = pairs(module.kernel_size)
    if padding == 'SAME' and k[0] == k[1] and k[0] % 2:
      return k[0] // 2
    return 0 if padding == 'VALID' else None
  (top, bottom), (left, right) = padding
  return top if top == bottom == left == right else None


def is_plain_square_conv(module) -> bool:
  """A 2-D, square, stride-1, undilated, ungrouped conv with a bias, symmetric padding and
  no mask: the convs the CPU kernels compute."""
  k = pairs(module.kernel_size)
  return (len(k) == 2 and k[0] == k[1] and pairs(module.strides) == (1, 1) and
          pairs(module.input_dilation) == (1, 1) and pairs(module.kernel_dilation) == (1, 1)
          and module.feature_group_count == 1 and module.use_bias and module.mask is None and
          symmetric_padding(module) is not None)


def conv_parameters(module, x: jax.Array):
  """(kernel, bias, x) of a conv module (nn.Conv, or nn.ConvTranspose without
  transpose_kernel), created or read under its names and shapes, in the dtype it computes in."""
  k = pairs(module.kernel_size)
  kernel = module.param('kernel', module.kernel_init, k + (x.shape[-1], module.features),
                        module.param_dtype)
  bias = module.param('bias', module.bias_init, (module.features,), module.param_dtype)
  x, kernel, bias = module.promote_dtype(x, kernel, bias, dtype=module.dtype)
  return kernel, bias, x


def lax_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((padding, padding),) * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
