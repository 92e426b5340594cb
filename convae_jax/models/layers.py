"""Layers shared by the models, each in the formulation that compiles well where it runs.

A layer computes one function; how it is computed is a `Formulations` choice, read when the
layer is traced: the defaults are what measured fastest (docs/performance.md), and
`with formulations(conv='lax'): ...` traces a model with another, e.g. for the ablation in
benchmarks/ablation.py. Every choice computes the same function (tests/test_models.py).
"""
import contextlib
import contextvars
import dataclasses
import functools
from typing import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Formulations:
  """How the shared layers compute their functions.

  pool: 'views', an elementwise max of the window's strided views with a custom gradient
    (`max_pool`); 'flax', nn.max_pool (its gradient is a select-and-scatter, slow on XLA:CPU).
  pooled_bias: a conv followed by pooling adds its bias after the pooling (same values, a
    cheaper bias gradient) rather than before it.
  conv: 'auto' picks 'tap_sum' for convs of few input channels on CPU and 'lax' otherwise;
    'tap_sum', a fused sum of k*k*C_in shifted multiply-adds (measured on XLA:CPU only);
    'lax', lax.conv_general_dilated; 'patch', k*k patches and one matrix product (measured
    slower on XLA:CPU, kept for the ablation).
  deconv: 'matmul', a kernel-equals-stride transposed conv as one matrix product and
    depth-to-space; 'lax', lax.conv_transpose.
  group_norm: 'fused', group norm and the activation after it as one reduction and one
    elementwise pass each way, with a custom gradient (`GroupNorm`); 'flax', nn.GroupNorm
    then the activation.
  upsample_conv: 'phases', 2x nearest upsampling then a 3x3 conv as four 2x2 convs of the
    low-resolution input, one per output phase (`UpsampleConv`); 'repeat', the upsampled
    image, then the conv.
  """
  pool: str = 'views'
  pooled_bias: bool = True
  conv: str = 'auto'
  deconv: str = 'matmul'
  group_norm: str = 'fused'
  upsample_conv: str = 'phases'

  def __post_init__(self):
    allowed = {'pool': ('views', 'flax'), 'conv': ('auto', 'tap_sum', 'lax', 'patch'),
               'deconv': ('matmul', 'lax'), 'group_norm': ('fused', 'flax'),
               'upsample_conv': ('phases', 'repeat')}
    for field, values in allowed.items():
      if getattr(self, field) not in values:
        raise ValueError(f'layers.Formulations: {field}={getattr(self, field)!r}; allowed: '
                         f'{", ".join(values)}')


_FORMULATIONS = contextvars.ContextVar('formulations', default=Formulations())


def parse_formulations(text: str) -> dict:
  """'field=value,...' (e.g. 'upsample_conv=repeat,pooled_bias=False') -> the changes it
  makes to Formulations, checked; '' -> none. Raises ValueError naming what is wrong."""
  changes, fields = {}, [f.name for f in dataclasses.fields(Formulations)]
  for item in filter(None, (part.strip() for part in text.split(','))):
    field, sep, value = item.partition('=')
    if not sep or field not in fields:
      raise ValueError(f'{item!r} is not FIELD=VALUE with FIELD one of {", ".join(fields)}')
    changes[field] = {'True': True, 'False': False}.get(value, value)
  Formulations(**changes)  # Checks the values.
  return changes


def current_formulations() -> Formulations:
  return _FORMULATIONS.get()


@contextlib.contextmanager
def formulations(**changes) -> Iterator[Formulations]:
  """Layers traced inside the block use these formulations (the others as they are)."""
  token = _FORMULATIONS.set(dataclasses.replace(_FORMULATIONS.get(), **changes))
  try:
    yield _FORMULATIONS.get()
  finally:
    _FORMULATIONS.reset(token)


def torch_default_init(fan_in: int) -> Callable:
  """PyTorch's default Conv/ConvTranspose init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  Used so that a model ported from PyTorch also trains like it, not only computes like it.
  """
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def stored_once(x: jax.Array) -> jax.Array:
  """`x` (bitwise, if finite), in a form XLA computes once and stores.

  XLA fuses cheap elementwise producers into every consumer, recomputing them there. That is
  costly for a value that is expensive to make (random noise) and read many times (by each of
  a conv's taps). A division counts as expensive to XLA, so this exact one stops that.
  A non-finite x gives NaN.
  """
  return x / (x - x + 1.0)


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
  MaxPool2d (a tie sends the gradient to the first maximum in the window, row-major), written
  for XLA:CPU: nn.max_pool's gradient is a select-and-scatter, slow there. The forward pass is
  an elementwise max over the window's strided views, which fuses with the layer before it; it
  saves only the winner's position, and the backward pass is one elementwise select.

  `bias` (per channel; the bias of the layer before) is added after the max, bitwise the same
  values (rounding is monotonic, so max(a + b, c + b) == max(a, c) + b). Its gradient is then
  a sum over the pooled gradient, not over the full-size routed one, which XLA would otherwise
  compute once more just for that sum.
  """
  if current_formulations().pool == 'flax':
    x = x if bias is None else x + bias
    return nn.max_pool(x, (window, window), (window, window))
  return _max_pool(x, bias, window)


def _biased_views(x, bias, window):
  views = _pool_windows(x, window)
  return views if bias is None else [view + bias for view in views]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _max_pool(x, bias, window):
  pooled = functools.reduce(jnp.maximum, _pool_windows(x, window))
  return pooled if bias is None else pooled + bias


def _max_pool_fwd(x, bias, window):
  # The winner is taken among the biased values, so that ties are PyTorch's ties.
  views = _biased_views(x, bias, window)
  pooled = functools.reduce(jnp.maximum, views)
  winner = jnp.full(pooled.shape, len(views) - 1, x.dtype)  # float: compares vectorize.
  for position in reversed(range(len(views) - 1)):  # The first maximum wins.
    winner = jnp.where(views[position] == pooled, float(position), winner)
  # Stored once, as by stored_once (else the backward pass recomputes it, and the layer
  # before the pooling with it, per output position), but with a denominator from `pooled`:
  # a non-finite `pooled` makes the winner NaN, so that window's gradient is zero.
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


# With conv='auto' on CPU, up to this many input channels a conv's forward pass is summed
# tap by tap (`_tap_sum_conv`).
TAP_SUM_MAX_IN_FEATURES = 4


def _lax_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((padding, padding),) * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tap_sum_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """A stride-1 conv with few input channels as a sum of k*k*C_in shifted, scaled copies.

  XLA:CPU runs a convolution with 3 input channels (an image) far below its matrix-product
  speed; these elementwise multiply-adds fuse into one loop that is several times faster
  there (docs/performance.md). The backward pass is the convolution's own (its kernel
  gradient is an ordinary large contraction).
  """
  k = kernel.shape[0]
  _, h, w, c = x.shape
  out_h, out_w = h + 2 * padding - k + 1, w + 2 * padding - k + 1
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  taps = [x[:, a:a + out_h, b:b + out_w, i:i + 1] * kernel[a, b, i]
          for a in range(k) for b in range(k) for i in range(c)]
  return functools.reduce(jnp.add, taps)


def _tap_sum_conv_fwd(x, kernel, padding):
  return _tap_sum_conv(x, kernel, padding), (x, kernel)


def _tap_sum_conv_bwd(padding, residuals, grad):
  x, kernel = residuals
  return jax.vjp(lambda x, kernel: _lax_conv(x, kernel, padding), x, kernel)[1](grad)


_tap_sum_conv.defvjp(_tap_sum_conv_fwd, _tap_sum_conv_bwd)


def _patch_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """A stride-1 conv as one [N*H*W, k*k*C_in] x [k*k*C_in, C_out] product over k x k patches."""
  n, h, w, c = x.shape
  k = kernel.shape[0]
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out_h, out_w = h + 2 * padding - k + 1, w + 2 * padding - k + 1
  # Channel order (a, b, c) matches kernel.reshape(k * k * c, out).
  patches = jnp.concatenate([x[:, a:a + out_h, b:b + out_w, :]
                             for a in range(k) for b in range(k)], axis=-1)
  return jnp.dot(patches, kernel.reshape(k * k * c, kernel.shape[-1]))


class Conv(nn.Module):
  """Stride-1 square conv, NHWC: the function and parameters of `nn.Conv(features, (k, k),
  padding=padding)`, computed by whichever formulation is fastest for its input width.

  With `pool_window` > 1 the layer is that conv followed by `max_pool(window=pool_window)`,
  with the bias added by the pooling (see max_pool: same values, a cheaper bias gradient).
  """
  features: int
  kernel_size: int = 3
  padding: int = 1
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()
  pool_window: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    if self.pool_window > 1 and current_formulations().pooled_bias:
      return max_pool(self.convolve(x, kernel), self.pool_window, bias=bias)
    if self.pool_window > 1:
      return max_pool(self.convolve(x, kernel) + bias, self.pool_window)
    return self.convolve(x, kernel) + bias

  def convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    conv = current_formulations().conv
    if conv == 'auto':
      few_channels = x.shape[-1] <= TAP_SUM_MAX_IN_FEATURES
      conv = 'tap_sum' if few_channels and jax.default_backend() == 'cpu' else 'lax'
    if conv == 'tap_sum':
      return _tap_sum_conv(x, kernel, self.padding)
    if conv == 'patch':
      return _patch_conv(x, kernel, self.padding)
    return _lax_conv(x, kernel, self.padding)


def torch_conv(features: int, in_features: int, kernel_size: int = 3, padding: int = 1,
               name: str | None = None, pool_window: int = 1) -> Conv:
  """A stride-1 conv with PyTorch Conv2d's padding arithmetic and default init."""
  fan_in = in_features * kernel_size**2
  return Conv(features, kernel_size, padding, name=name, pool_window=pool_window,
              kernel_init=torch_default_init(fan_in), bias_init=torch_default_init(fan_in))


class PatchConvTranspose(nn.Module):
  """Transposed convolution whose kernel equals its stride (PyTorch ConvTranspose2d(k, stride=k)).

  Each input pixel paints its own non-overlapping k x k output patch, so the layer is one
  matrix product ([N*H*W, in] x [in, k*k*out]) followed by depth-to-space. Kernel layout
  [k, k, in, out], not flipped:
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
    if current_formulations().deconv == 'lax':
      return jax.lax.conv_transpose(x, jnp.swapaxes(kernel, 2, 3), (k, k), 'VALID',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                    transpose_kernel=True) + bias
    # A plain 2-D matrix product: XLA:CPU lays an einsum's output out as (a, b, o) x (n, h, w)
    # and then transposes it twice; this keeps pixels major and pays one depth-to-space.
    patches = jnp.dot(x.reshape(n * h * w, c),
                      kernel.transpose(2, 0, 1, 3).reshape(c, k * k * self.features))
    patches = patches.reshape(n, h, w, k, k, self.features).transpose(0, 1, 3, 2, 4, 5)
    return patches.reshape(n, h * k, w * k, self.features) + bias


# After 2x nearest upsampling, output row 2i + a of a 3x3 conv (padding 1) reads input rows
# i - 1 + r, r in {0, 1}, for phase a = 0, and i + r for a = 1, with kernel rows summed:
# PHASE_ROWS[a, r, u] says whether the 3x3 kernel's row u adds to the 2x2 kernel's row r.
PHASE_ROWS = ((((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1))))


def upsample_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`conv3x3(nearest_upsample_2x(x), kernel)` with padding 1 (NHWC, kernel HWIO), computed
  as four 2x2 convs of `x` itself, one per output phase (a, b), interleaved.

  The same function with 4/9 of the multiply-adds, and no upsampled image: XLA:CPU spent
  most of such a layer's step on the upsampled input (its kernel gradient transposes it).
  """
  n, h, w, _ = x.shape
  rows = jnp.asarray(PHASE_ROWS, kernel.dtype)
  # Exact sums of kernel taps (HIGHEST: no bfloat16 passes on GPU/TPU).
  phase_kernels = jnp.einsum('aru,bsv,uvio->abrsio', rows, rows, kernel,
                             precision=jax.lax.Precision.HIGHEST)
  phases = [[jax.lax.conv_general_dilated(x, phase_kernels[a, b], (1, 1),
                                          ((1 - a, a), (1 - b, b)),
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
             for b in range(2)] for a in range(2)]
  # [n, h, a, w, b, c] -> [n, 2h, 2w, c]: output pixel (2i + a, 2j + b) is phase (a, b)'s (i, j).
  out = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
  return out.reshape(n, 2 * h, 2 * w, kernel.shape[-1])


class UpsampleConv(nn.Module):
  """2x nearest-neighbour upsampling, then a 3x3 conv with padding 1: the function and
  parameters (kernel [3, 3, in, out], bias) of `nn.Conv(features, (3, 3), padding=1)` applied
  to `jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)`."""
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (3, 3, x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    if current_formulations().upsample_conv == 'repeat':
      upsampled = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      return _lax_conv(upsampled, kernel, 1) + bias
    return upsample_conv(x, kernel) + bias


def _per_pixel(v: jax.Array, x: jax.Array) -> jax.Array:
  """A per (example, channel) value [N, C], shaped to broadcast against x [N, ..., C]."""
  return v.reshape(x.shape[0], *(1,) * (x.ndim - 2), x.shape[-1])


def _channel_sums(u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per (example, channel): the sums over the pixels of u and of u * v, in one pass (XLA
  fuses the two into one reduction)."""
  spatial = tuple(range(1, u.ndim - 1))
  sums = jnp.stack([jnp.sum(u, spatial), jnp.sum(u * v, spatial)])
  return sums[0], sums[1]


def _group_means(sums: jax.Array, x: jax.Array, num_groups: int) -> jax.Array:
  """Per-channel sums over the pixels [N, C] -> the mean over each channel's group, per
  channel [N, C]."""
  n, c = x.shape[0], x.shape[-1]
  size = (x.size // (n * c)) * (c // num_groups)  # Values in one example's group.
  return jnp.repeat(sums.reshape(n, num_groups, -1).sum(-1) / size, c // num_groups, axis=-1)


def _normalized(x, scale, bias, num_groups, epsilon):
  """(x as float32, its group's 1/std, per-pixel scale a, group norm's output a * x + b)."""
  xf = x.astype(jnp.float32)
  sum_x, sum_x2 = _channel_sums(xf, xf)
  mean = _group_means(sum_x, x, num_groups)
  variance = jnp.maximum(_group_means(sum_x2, x, num_groups) - mean * mean, 0.0)
  rstd = jax.lax.rsqrt(variance + epsilon)
  a = rstd * scale.astype(jnp.float32)
  b = bias.astype(jnp.float32) - mean * a
  return xf, mean, rstd, a, xf * _per_pixel(a, x) + _per_pixel(b, x)


def _identity(x):
  return x


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _group_norm(x, scale, bias, num_groups, epsilon, activation):
  return activation(_normalized(x, scale, bias, num_groups, epsilon)[-1]).astype(x.dtype)


def _group_norm_fwd(x, scale, bias, num_groups, epsilon, activation):
  return _group_norm(x, scale, bias, num_groups, epsilon, activation), (x, scale, bias)


def _group_norm_bwd(num_groups, epsilon, activation, residuals, grad):
  # With xhat = (x - mean) * rstd and gy the gradient at the norm's output (before the
  # activation): dx = rstd * (scale * gy - mean_g(scale * gy) - xhat * mean_g(scale * gy *
  # xhat)), means over the group. Both means come from two per-channel sums over the pixels,
  # of gy and gy * x, so the gradient is one reduction pass and one elementwise pass.
  x, scale, bias = residuals
  # The forward pass recomputed: cheaper than storing its statistics and output.
  xf, mean, rstd, a, norm_out = _normalized(x, scale, bias, num_groups, epsilon)
  gy = jax.vjp(activation, norm_out)[1](grad.astype(jnp.float32))[0]
  sum_gy, sum_gy_x = _channel_sums(gy, xf)
  sum_gy_xhat = rstd * (sum_gy_x - mean * sum_gy)
  gamma = scale.astype(jnp.float32)
  m1 = _group_means(gamma * sum_gy, x, num_groups)
  m2 = _group_means(gamma * sum_gy_xhat, x, num_groups)
  dx = (_per_pixel(a, x) * gy + _per_pixel(-rstd * rstd * m2, x) * xf +
        _per_pixel(rstd * (rstd * mean * m2 - m1), x))
  return (dx.astype(x.dtype), sum_gy_xhat.sum(0).astype(scale.dtype),
          sum_gy.sum(0).astype(bias.dtype))


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nn.Module):
  """`activation(nn.GroupNorm(num_groups, epsilon)(x))`: the same function and parameters
  (scale, bias), over all axes but the first (examples) and the last (channels).

  Formulation 'fused' (the default) computes it as one reduction pass and one elementwise
  pass, forward and backward (a custom gradient): XLA:CPU runs nn.GroupNorm's grouped
  reductions, and the autodiff of the activation after it, as many more passes.
  Statistics are float32 whatever the input's precision.
  """
  num_groups: int
  epsilon: float = 1e-6
  activation: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[-1] % self.num_groups:
      raise ValueError(f'GroupNorm: {x.shape[-1]} channels do not split into '
                       f'{self.num_groups} groups')
    activation = self.activation or _identity
    scale = self.param('scale', nn.initializers.ones_init(), (x.shape[-1],))
    bias = self.param('bias', nn.initializers.zeros_init(), (x.shape[-1],))
    if current_formulations().group_norm == 'flax':
      reference = nn.GroupNorm(num_groups=self.num_groups, epsilon=self.epsilon)
      return activation(reference.apply({'params': {'scale': scale, 'bias': bias}}, x))
    return _group_norm(x, scale, bias, self.num_groups, self.epsilon, activation)


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


# The trainer's pmap axis (steps.py): parts that must agree across devices reduce over it.
DEVICE_AXIS = 'batch'


def _over_devices(reduce: Callable, x: jax.Array) -> jax.Array:
  try:
    return reduce(x, DEVICE_AXIS)
  except NameError:  # Not inside the trainer's pmap (init, inference, a test): one device.
    return x


def device_mean(x: jax.Array) -> jax.Array:
  """The mean of `x` over the data-parallel devices (x itself outside the trainer's pmap)."""
  return _over_devices(jax.lax.pmean, x)


def device_concat(x: jax.Array) -> jax.Array:
  """`x` of every device, concatenated along axis 0 in device order (the global batch's)."""
  return _over_devices(lambda v, axis: jax.lax.all_gather(v, axis, tiled=True), x)


def projection(features: int, name: str | None = None) -> nn.Dense:
  """A 1x1 convolution (dense over channels) with PyTorch's default kernel scale."""
  return nn.Dense(features, kernel_init=nn.initializers.variance_scaling(
      1.0 / 3.0, 'fan_in', 'uniform'), name=name)
