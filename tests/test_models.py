"""The seed model: shapes, parameter count, full convolutionality, registries; the shared fast
layers against Flax's own."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import cifar
from convae_jax import models
from convae_jax.models import layers


def _seed_model():
  return models.create_model(cifar.model('cae'))


def test_shapes_and_parameter_count():
  model = _seed_model()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == 7347
  images = jax.random.uniform(jax.random.key(1), (5, 32, 32, 3))
  latents = model.apply(variables, images, False, method=model.encode)
  assert latents.shape == (5, 8, 8, 32)
  output = model.apply(variables, images)
  assert output.reconstruction.shape == images.shape
  assert output.losses['mse'].shape == (5,)
  assert float(output.reconstruction.min()) >= 0.0 and float(output.reconstruction.max()) <= 1.0


@pytest.mark.parametrize('height,width', [(4, 4), (16, 24), (64, 36)])
def test_fully_convolutional(height, width):
  model = _seed_model()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  output = model.apply(variables, jnp.full((2, height, width, 3), 0.5))
  assert output.reconstruction.shape == (2, height, width, 3)


def test_unknown_model_lists_known_ones():
  with pytest.raises(ValueError, match=r"unknown model.name 'nope'; known: .*autoencoder"):
    models.create_model(ml_collections.ConfigDict({'name': 'nope'}))


def test_a_retired_model_name_points_to_its_preset():
  with pytest.raises(ValueError, match=r"model.name 'vae' is from an older convae_jax: it is "
                                       r"now the preset configs/cifar.py:vae"):
    models.create_model(ml_collections.ConfigDict({'name': 'vae', 'features': (16, 32)}))


@pytest.mark.parametrize('change,message', [
    ({'backbone': {'name': 'seed', 'widths': (4, 8)}},
     r"model.backbone 'seed' has no setting widths; its settings are: features"),
    ({'bottleneck': {'name': 'vq', 'levels': (8, 8)}}, r"model.bottleneck 'vq' has no setting "
                                                       r"levels; its settings are: code_dim"),
    ({'bottleneck': {'name': 'nope'}}, r"unknown model.bottleneck.name 'nope'; known: fsq, "
                                       r"gaussian, identity, .*vq"),
    ({'likelihood': {'name': 'discretized_logistic', 'log_scale': 'x'}},
     r"model.likelihood 'discretized_logistic': log_scale='x'; allowed: channel, pixel"),
    ({'likelihood': {'name': 'logistic_mixture', 'num_components': 0}},
     r"model.likelihood 'logistic_mixture': num_components=0 must be an integer >= 1"),
    ({'bottleneck': {'name': 'fsq', 'levels': (8, 1)}}, r"model.bottleneck 'fsq': levels=\(8, 1\) must "
                                                       r"be one or more integers >= 2"),
    ({'bottleneck': {'name': 'vq', 'ema_decay': 1.0}}, r"ema_decay=1.0 must lie in \(0, 1\)"),
    ({'bottleneck': {'name': 'gaussian', 'beta': -1.0}}, r"model.bottleneck 'gaussian': beta=-1.0 must"),
    ({'bottleneck': {'name': 'gaussian', 'prior': 'low_rank', 'free_bits': 0.5}},
     r"free_bits=0.5 must be 0 with prior='low_rank' \(its KL does not split by channel\)"),
    ({'bottleneck': {'name': 'gaussian', 'prior': 'flow'}},
     r"model.bottleneck 'gaussian': prior='flow'; allowed: standard, low_rank"),
    ({'corruption': {'name': 'mask', 'prob': 1.0}}, r"model.corruption 'mask': prob=1.0 must lie in"),
    ({'backbone': {'name': 'resnet', 'normalization': 'x'}},
     r"model.backbone 'resnet': normalization='x'; allowed: none, batch, group, layer"),
    ({'corruption': {'name': 'gaussian'}, 'bottleneck': {'name': 'gaussian'}},
     r"model.corruption.name='gaussian' \(denoising\) needs a deterministic bottleneck, but "
     r"model.bottleneck.name='gaussian' draws random latents; use one of: fsq, identity, .*vq"),
])
def test_bad_part_settings_are_refused(change, message):
  config = cifar.model('cae')
  for part, settings in change.items():
    config[part] = settings
  with pytest.raises(ValueError, match=message):
    models.create_model(config)


def test_every_part_setting_is_in_the_preset_configs():
  # So each can be set from the command line (--config.model.bottleneck.beta=0.5).
  config = cifar.model('vqvae-resnet')
  assert set(config.bottleneck) == {'name'} | set(models.registry.settings_of(
      models.BOTTLENECKS.get('vq')))
  assert config.bottleneck.code_dim is None
  config.bottleneck.code_dim = 8  # A typed placeholder.
  assert models.create_model(config).num_codes == 512


def test_max_pool_matches_flax_max_pool():
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 5))
  np.testing.assert_array_equal(layers.max_pool(x, 2), nn.max_pool(x, (2, 2), (2, 2)))


def test_patch_conv_transpose_matches_lax_conv_transpose():
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
  layer = layers.PatchConvTranspose(6, stride=2)
  variables = layer.init(jax.random.key(1), x)
  kernel, bias = variables['params']['kernel'], variables['params']['bias']
  # lax.conv_transpose with transpose_kernel=True is the gradient-of-conv definition that
  # PyTorch's ConvTranspose2d follows; it expects the kernel as [kh, kw, out, in].
  expected = jax.lax.conv_transpose(x, jnp.swapaxes(kernel, 2, 3), (2, 2), 'VALID',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                    transpose_kernel=True) + bias
  np.testing.assert_allclose(layer.apply(variables, x), expected, atol=1e-5)


@pytest.mark.parametrize('in_features,kernel_size,padding',
                         [(3, 3, 1), (1, 3, 0), (5, 1, 0), (5, 3, 0), (8, 5, 2)])
@pytest.mark.parametrize('conv', ['auto', 'tap_sum', 'lax', 'patch'])
def test_conv_matches_flax_conv(conv, in_features, kernel_size, padding):
  # Every formulation of layers.Conv is nn.Conv's function ('auto': tap sums for few input
  # channels on CPU, lax.conv otherwise; 'patch' is the ablation's candidate).
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, in_features))
  layer = layers.Conv(6, kernel_size, padding)
  params = layer.init(jax.random.key(1), x)
  reference = nn.Conv(6, (kernel_size, kernel_size), padding=padding)
  with layers.formulations(conv=conv):
    np.testing.assert_allclose(layer.apply(params, x), reference.apply(params, x),
                               rtol=1e-5, atol=1e-5)
    # Same gradients too: training depends on the backward pass, not only on the forward.
    loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
    ours = jax.grad(loss(layer), argnums=(0, 1))(params, x)
  theirs = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), ours, theirs)


@pytest.mark.parametrize('shape,features', [((2, 4, 4, 5), 6), ((3, 5, 3, 2), 4),
                                            ((1, 1, 1, 3), 2)])
def test_upsample_conv_is_nearest_upsampling_then_flax_conv(shape, features):
  # The four-phase formulation (the default) and 'repeat' are both nn.Conv after 2x nearest
  # upsampling, values and gradients, on odd sizes and a single pixel (all border).
  x = jax.random.normal(jax.random.key(0), shape)
  layer = layers.UpsampleConv(features)
  params = layer.init(jax.random.key(1), x)
  reference = lambda p, x: nn.Conv(features, (3, 3), padding=1).apply(
      p, jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
  loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
  expected, expected_grads = reference(params, x), jax.grad(loss(reference), (0, 1))(params, x)
  for choice in ('phases', 'repeat'):
    with layers.formulations(upsample_conv=choice):
      np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-5, atol=1e-5)
      grads = jax.grad(loss(layer.apply), (0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads,
                 expected_grads)


def test_max_pool_gradient_matches_flax_including_ties():
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 5))
  # Ties inside windows: two and three equal maxima (the first one takes the gradient).
  x = x.at[1, 2, 2, 3].set(9.0).at[1, 2, 3, 3].set(9.0)
  x = x.at[0, 4, 5, 0].set(7.0).at[0, 5, 4, 0].set(7.0).at[0, 5, 5, 0].set(7.0)
  weights = jax.random.normal(jax.random.key(1), (2, 4, 6, 5))
  loss = lambda pool: lambda x: jnp.sum(jnp.sin(pool(x)) * weights)
  ours = jax.grad(loss(layers.max_pool))(x)
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
  np.testing.assert_array_equal(layers.max_pool(x, 2, bias=bias), reference(x, bias))
  weights = jax.random.normal(jax.random.key(1), (2, 4, 6, 5))
  loss = lambda pool: lambda x, bias: jnp.sum(jnp.sin(pool(x, bias)) * weights)
  ours = jax.jit(jax.grad(loss(lambda x, b: layers.max_pool(x, 2, bias=b)), argnums=(0, 1)))(
      x, bias)
  theirs = jax.grad(loss(reference), argnums=(0, 1))(x, bias)
  np.testing.assert_array_equal(ours[0], theirs[0])
  np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-5)
  assert ours[0][0, 0, 0, 1] != 0 and ours[0][0, 0, 1, 1] == 0  # The first biased maximum.


def test_conv_with_pool_window_is_conv_then_max_pool():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  layer = layers.Conv(6, 3, 1, pool_window=2, bias_init=nn.initializers.normal(1.0))
  params = layer.init(jax.random.key(1), x)
  unpooled = layers.Conv(6, 3, 1)
  expected = nn.max_pool(unpooled.apply(params, x), (2, 2), (2, 2))
  np.testing.assert_array_equal(layer.apply(params, x), expected)
  loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p)))
  ours = jax.grad(loss(lambda p: layer.apply(p, x)))(params)
  theirs = jax.grad(loss(lambda p: nn.max_pool(unpooled.apply(p, x), (2, 2), (2, 2))))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, theirs)



@pytest.mark.parametrize('activation', [None, nn.silu, nn.relu])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_group_norm_matches_flax_group_norm_then_activation(activation, dtype):
  # 'fused' (the default, a custom gradient) against nn.GroupNorm then the activation: the
  # same function and the same gradients for the input, the scale and the bias.
  x = (jax.random.normal(jax.random.key(0), (3, 6, 5, 16)) * 2.0 + 1.0).astype(dtype)
  layer = layers.GroupNorm(4, activation=activation)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(1), p.shape),
                        layer.init(jax.random.key(2), x))
  weights = jax.random.normal(jax.random.key(3), x.shape)
  loss = lambda p, x: jnp.sum(layer.apply(p, x).astype(jnp.float32) * weights)
  results = {}
  for form in ('fused', 'flax'):
    with layers.formulations(group_norm=form):
      results[form] = (layer.apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x))
  (out, grads), (expected, expected_grads) = results['fused'], results['flax']
  assert out.dtype == dtype
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.float32(out), np.float32(expected), rtol=tolerance,
                             atol=tolerance)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.float32(a), np.float32(b), rtol=tolerance * 10, atol=tolerance * 10 * float(
          np.max(np.abs(np.float32(b))))), grads, expected_grads)


def test_group_norm_refuses_channels_that_do_not_split_into_groups():
  with pytest.raises(ValueError, match='6 channels do not split into 4 groups'):
    layers.GroupNorm(4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 6)))


@pytest.mark.parametrize('reference', [{'group_norm': 'flax'}, {'upsample_conv': 'repeat'}],
                         ids=lambda c: ','.join(f'{k}={v}' for k, v in c.items()))
def test_resnet_backbone_computes_the_same_function_in_every_formulation(reference):
  # The resnet backbone with its default layers (fused group norm, four-phase upsampling
  # convs) and with the reference ones: the same reconstructions and gradients.
  model = models.create_model(cifar.model('resae'))
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  params = model.init(jax.random.key(1), images)['params']
  loss = lambda params: jnp.mean((model.apply({'params': params}, images).reconstruction -
                                  images)**2)
  with layers.formulations(**reference):
    expected = jax.value_and_grad(loss)(params)
  value, grads = jax.value_and_grad(loss)(params)
  np.testing.assert_allclose(value, expected[0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6), grads,
               expected[1])


FORMULATIONS = [{}, {'pool': 'flax'}, {'pooled_bias': False}, {'conv': 'lax'},
                 {'conv': 'tap_sum'}, {'conv': 'patch'}, {'deconv': 'lax'},
                 {'pool': 'flax', 'pooled_bias': False, 'conv': 'lax', 'deconv': 'lax'}]


@pytest.mark.parametrize('changes', FORMULATIONS, ids=lambda c: ','.join(
    f'{k}={v}' for k, v in c.items()) or 'default')
def test_every_formulation_computes_the_seed_function(changes):
  # benchmarks/ablation.py times the seed under these formulations: each is the same model.
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  loss = lambda model: lambda params: jnp.mean(
      (model.apply({'params': params}, images).reconstruction - images)**2)
  model = _seed_model()
  params = model.init(jax.random.key(1), images)['params']
  with layers.formulations(conv='lax'):
    expected = jax.value_and_grad(loss(model))(params)
  with layers.formulations(**changes):
    value, grads = jax.value_and_grad(loss(model))(params)
  np.testing.assert_allclose(value, expected[0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads,
               expected[1])


def test_formulations_apply_inside_their_block_only():
  with layers.formulations(conv='patch', deconv='lax') as chosen:
    assert chosen == layers.current_formulations() == layers.Formulations(conv='patch',
                                                                          deconv='lax')
  assert layers.current_formulations() == layers.Formulations()
  with pytest.raises(ValueError, match="conv='winograd'; allowed: auto, tap_sum, lax, patch"):
    layers.Formulations(conv='winograd')


def test_stored_once_is_the_identity_on_finite_values():
  x = jnp.array([0.0, -0.0, 1e-30, -3.5, 1e30, jnp.inf, jnp.nan])
  stored = jax.jit(layers.stored_once)(x)
  np.testing.assert_array_equal(stored[:5], x[:5])
  assert np.signbit(stored[1]) and np.isnan(stored[5]) and np.isnan(stored[6])
