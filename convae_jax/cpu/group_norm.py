"""`layers.ActivatedGroupNorm` (group norm, then an activation) on XLA:CPU: one reduction
pass and one elementwise pass each way, with a custom gradient. XLA:CPU runs nn.GroupNorm's
grouped reductions, and the autodiff of the activation after it, as many more passes."""
import functools

import jax
import jax.numpy as jnp


def applies(module) -> bool:
  return (module.num_groups is not None and module.group_size is None and
          module.use_bias and module.use_scale and module.reduction_axes is None and
          module.axis_name is None and module.use_fast_variance and module.dtype is None)


def group_norm(module, x: jax.Array) -> jax.Array:
  """activation(group_norm(x)) over all axes but the first (examples) and the last
  (channels); statistics in float32 whatever the input's precision."""
  if x.shape[-1] % module.num_groups:
    raise ValueError(f'GroupNorm: {x.shape[-1]} channels do not split into '
                     f'{module.num_groups} groups')
  scale = module.param('scale', module.scale_init, (x.shape[-1],), module.param_dtype)
  bias = module.param('bias', module.bias_init, (x.shape[-1],), module.param_dtype)
  dtype = jnp.result_type(x, scale, bias)
  return _group_norm(x.astype(dtype), scale.astype(dtype), bias.astype(dtype),
                     module.num_groups, module.epsilon, module.activation)


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
  """(x as float32, its group's mean and 1/std, per-pixel scale a, output a * x + b)."""
  xf = x.astype(jnp.float32)
  sum_x, sum_x2 = _channel_sums(xf, xf)
  mean = _group_means(sum_x, x, num_groups)
  variance = jnp.maximum(_group_means(sum_x2, x, num_groups) - mean * mean, 0.0)
  rstd = jax.lax.rsqrt(variance + epsilon)
  a = rstd * scale.astype(jnp.float32)
  b = bias.astype(jnp.float32) - mean * a
  return xf, mean, rstd, a, xf * _per_pixel(a, x) + _per_pixel(b, x)


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
