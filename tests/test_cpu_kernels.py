"""convae_jax.cpu: each CPU kernel computes its plain Flax twin's function and gradients, under
the same parameters; the seam puts them in only where named, and only for settings they take."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar
from convae_jax import models
from convae_jax.cpu import kernels as cpu_kernels
from convae_jax.cpu import pooled_conv
from convae_jax.models import layers

ALL = ','.join(cpu_kernels.KERNELS)


def _loss(module):
  return lambda params, x: jnp.sum(jnp.sin(module.apply(params, x).astype(jnp.float32)))


def _check_same_function(module, x, kernel: str, rtol=1e-5, grad_rtol=1e-4, atol=1e-5):
  """`module` with `kernel` put in computes what it computes plain: values and gradients
  (for the parameters and the input), from the same parameters."""
  params = module.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape),
                        params)
  expected = module.apply(params, x)
  expected_grads = jax.grad(_loss(module), (0, 1))(params, x)
  with cpu_kernels.use(kernel):
    assert jax.tree.map(jnp.shape, module.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, params)  # Same names and shapes.
    out = module.apply(params, x)
    grads = jax.grad(_loss(module), (0, 1))(params, x)
  assert out.dtype == expected.dtype and out.shape == expected.shape
  np.testing.assert_allclose(np.float32(out), np.float32(expected), rtol=rtol, atol=atol)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.float32(a), np.float32(b),
                                                       rtol=grad_rtol, atol=atol),
               grads, expected_grads)


@pytest.mark.parametrize('in_features,kernel_size,padding',
                         [(3, 3, 1), (1, 3, 0), (5, 1, 0), (8, 5, 2)])
@pytest.mark.parametrize('activation', [layers.identity, nn.selu, nn.relu])
def test_pooled_conv(in_features, kernel_size, padding, activation):
  # Tap sums for few input channels, lax.conv otherwise; the bias added after the pooling.
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, in_features))
  module = layers.PooledConv(6, (kernel_size, kernel_size), padding=padding, window=2,
                             activation=activation)
  _check_same_function(module, x, 'pooled_conv')


def test_max_pool_gradient_matches_flax_including_ties():
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 5))
  # Ties inside windows: two and three equal maxima (the first one takes the gradient).
  x = x.at[1, 2, 2, 3].set(9.0).at[1, 2, 3, 3].set(9.0)
  x = x.at[0, 4, 5, 0].set(7.0).at[0, 5, 4, 0].set(7.0).at[0, 5, 5, 0].set(7.0)
  weights = jax.random.normal(jax.random.key(1), (2, 4, 6, 5))
  loss = lambda pool: lambda x: jnp.sum(jnp.sin(pool(x)) * weights)
  ours = jax.grad(loss(pooled_conv.max_pool))(x)
  np.testing.assert_array_equal(ours, jax.grad(loss(lambda x: nn.max_pool(x, (2, 2), (2, 2))))(x))
  assert ours[1, 2, 2, 3] != 0 and ours[1, 2, 3, 3] == 0 and ours[0, 4, 5, 0] != 0


def test_max_pool_with_bias_is_pooling_of_biased_input():
  # The bias is added after the max: the same values bitwise, and the same gradients, with
  # ties decided among the biased values (here 1.0 + 1.5 and (1.0 + 2**-23) + 1.5 both round
  # to 2.5, so the first of them must win, though the second is the larger before the bias).
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 5))
  x = x.at[0, 0, 0, 1].set(1.0).at[0, 0, 1, 1].set(1.0 + 2**-23)
  x = x.at[0, 1, 0, 1].set(-1.0).at[0, 1, 1, 1].set(-1.0)
  bias = jax.random.normal(jax.random.key(2), (5,)).at[1].set(1.5)
  assert x[0, 0, 0, 1] + bias[1] == x[0, 0, 1, 1] + bias[1]
  reference = lambda x, bias: nn.max_pool(x + bias, (2, 2), (2, 2))
  np.testing.assert_array_equal(pooled_conv.max_pool(x, 2, bias=bias), reference(x, bias))
  weights = jax.random.normal(jax.random.key(1), (2, 4, 6, 5))
  loss = lambda pool: lambda x, bias: jnp.sum(jnp.sin(pool(x, bias)) * weights)
  ours = jax.jit(jax.grad(loss(lambda x, b: pooled_conv.max_pool(x, 2, bias=b)),
                          argnums=(0, 1)))(x, bias)
  theirs = jax.grad(loss(reference), argnums=(0, 1))(x, bias)
  np.testing.assert_array_equal(ours[0], theirs[0])
  np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-5)
  assert ours[0][0, 0, 0, 1] != 0 and ours[0][0, 0, 1, 1] == 0  # The first biased maximum.


@pytest.mark.parametrize('shape,stride', [((2, 3, 5, 4), 2), ((1, 2, 2, 3), 3)])
def test_conv_transpose(shape, stride):
  x = jax.random.normal(jax.random.key(0), shape)
  module = nn.ConvTranspose(6, (stride, stride), strides=(stride, stride), padding='VALID')
  _check_same_function(module, x, 'conv_transpose')


@pytest.mark.parametrize('shape,features', [((2, 4, 4, 5), 6), ((3, 5, 3, 2), 4),
                                            ((1, 1, 1, 3), 2)])
def test_upsample_conv(shape, features):
  # Odd sizes and a single pixel (all border).
  x = jax.random.normal(jax.random.key(0), shape)
  _check_same_function(layers.UpsampleConv(features, (3, 3), padding=1), x, 'upsample_conv')


@pytest.mark.parametrize('activation', [layers.identity, nn.silu, nn.relu])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_group_norm(activation, dtype):
  x = (jax.random.normal(jax.random.key(0), (3, 6, 5, 16)) * 2.0 + 1.0).astype(dtype)
  module = layers.ActivatedGroupNorm(4, activation=activation)
  if dtype == jnp.float32:
    _check_same_function(module, x, 'group_norm')
  else:
    _check_same_function(module, x, 'group_norm', rtol=2e-2, grad_rtol=0.2, atol=0.1)


def test_a_kernel_is_put_in_only_where_named_and_for_settings_it_takes():
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
  upsample = layers.UpsampleConv(4, (3, 3), padding=1)
  convs = lambda kernels, module: str(jax.make_jaxpr(
      lambda p: cpu_kernels.tracing_with(kernels, module.apply)(p, x))(
          module.init(jax.random.key(1), x))).count('conv_general_dilated')
  assert convs('none', upsample) == 1
  assert convs('pooled_conv', upsample) == 1  # Another kernel.
  assert convs('upsample_conv', upsample) == 4  # The four phases.
  assert convs('auto', upsample) == 4  # This is a CPU backend.
  # A setting the kernel does not compute (5x5) leaves the plain module.
  assert convs('upsample_conv', layers.UpsampleConv(4, (5, 5), padding=2)) == 1


def test_kernel_names_are_checked_and_auto_resolves_by_backend():
  assert cpu_kernels.resolve('auto', 'cpu') == ALL
  assert cpu_kernels.resolve('auto', 'gpu') == cpu_kernels.resolve('auto', 'tpu') == 'none'
  assert cpu_kernels.resolve('group_norm, pooled_conv', 'gpu') == 'group_norm,pooled_conv'
  with pytest.raises(ValueError, match="'winograd' is not a CPU kernel; use auto, none, or "
                     'names from: pooled_conv, conv_transpose, upsample_conv, group_norm'):
    cpu_kernels.parse('pooled_conv,winograd')


@pytest.mark.parametrize('preset', ['cae', 'resae'])
def test_presets_compute_the_same_function_with_every_kernel(preset):
  # Also: parameters trained with one kernel set load and run under the other (same tree).
  model = models.create_model(cifar.model(preset))
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  params = model.init(jax.random.key(1), images)['params']
  loss = lambda params: jnp.mean((model.apply({'params': params}, images).reconstruction -
                                  images)**2)
  expected = jax.value_and_grad(loss)(params)
  with cpu_kernels.use(ALL):
    assert jax.tree.map(jnp.shape, model.init(jax.random.key(1), images)['params']) == (
        jax.tree.map(jnp.shape, params))
    value, grads = jax.value_and_grad(loss)(params)
  np.testing.assert_allclose(value, expected[0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6), grads,
               expected[1])
