"""config.dtype='bfloat16': the backbone computes in bfloat16; parameters, optimizer state,
losses, metrics and the bottleneck stay float32; and the seed trains about as well."""
import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar
from convae_jax import config_checks, models, optimizer, steps

# The seed's test MSE after TRAIN_STEPS in bfloat16 is within this fraction of float32's.
MSE_TOLERANCE = 0.10
TRAIN_STEPS = 200
BATCH_SIZE = 16


def _float_dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)}


def _smooth_images(num: int, seed: int) -> np.ndarray:
  """uint8 images [num, 32, 32, 3] upsampled from 4x4 noise: structure a model can learn."""
  coarse = np.random.default_rng(seed).integers(0, 256, (num, 4, 4, 3)).astype(np.float32)
  images = jax.image.resize(coarse, (num, 32, 32, 3), 'linear')
  return np.asarray(np.clip(images, 0, 255)).astype(np.uint8)


@pytest.mark.parametrize('preset', ['cae', 'vqvae-resnet'])
def test_a_bfloat16_step_keeps_parameters_and_results_float32(preset, cifar_config):
  config = cifar_config(dtype='bfloat16')
  config.model = cifar.model(preset)
  config_checks.check(config, jax.device_count())
  model = models.create_model(config.model, config.dtype)
  assert model.dtype == 'bfloat16'
  # The backbone computes in bfloat16: its features are rounded to it.
  variables = model.init({'params': jax.random.key(0), **{s: jax.random.key(1) for s in
                                                          model.rng_streams}},
                         jnp.zeros((1, 32, 32, 3)))
  images = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
  features = model.apply(variables, images, False, method='features')
  assert features.dtype == jnp.float32
  np.testing.assert_array_equal(features, features.astype(jnp.bfloat16).astype(jnp.float32))
  state = flax.jax_utils.replicate(steps.create_train_state(
      model, optimizer.create_optimizer(config), jax.random.key(0), (32, 32, 3)))
  train_step = steps.make_train_step(config, model, (32, 32, 3), donate=False)
  images = np.random.default_rng(0).integers(0, 256, (4, 2, 32, 32, 3), np.uint8)
  state, update = train_step(state, images, jax.random.key(1))
  results = flax.jax_utils.unreplicate(update).compute()
  assert _float_dtypes(results) == {'float32'}
  assert float(results['non_finite_loss']) == float(results['non_finite_grads']) == 0.0
  assert np.isfinite(float(results['loss'])) and float(results['grad_norm']) > 0
  assert _float_dtypes(state.params) == _float_dtypes(state.opt_state) == {'float32'}
  assert _float_dtypes(state.model_state) <= {'float32'}  # Codebook statistics, if any.


def _test_mse(dtype: str) -> float:
  """The seed's test MSE after TRAIN_STEPS on one device, in `dtype`."""
  config = cifar.get_config('cae')
  config.dtype, config.batch_size = dtype, BATCH_SIZE
  config_checks.check(config, 1)
  model = models.create_model(config.model, config.dtype)
  device = jax.local_devices()[:1]
  state = flax.jax_utils.replicate(steps.create_train_state(
      model, optimizer.create_optimizer(config), jax.random.key(0), (32, 32, 3)), device)
  train_step = steps.make_train_step(config, model, (32, 32, 3))
  train_images, test_images = _smooth_images(1024, 0), _smooth_images(256, 1)
  for step in range(TRAIN_STEPS):
    batch = train_images[np.arange(step * BATCH_SIZE, (step + 1) * BATCH_SIZE) % 1024]
    state, _ = train_step(state, batch[None], jax.random.key(0))
  params = jax.tree.map(lambda x: x[0], state.params)
  test_images = test_images.astype(np.float32) / 255.0
  reconstruction = model.apply({'params': params}, test_images).reconstruction
  return float(np.mean((np.asarray(reconstruction) - test_images)**2))


@pytest.mark.slow
def test_the_seed_trains_in_bfloat16_about_as_well_as_in_float32():
  float32, bfloat16 = _test_mse('float32'), _test_mse('bfloat16')
  assert float32 < 0.01  # It learned: the untrained seed scores about 0.05.
  assert abs(bfloat16 - float32) <= MSE_TOLERANCE * float32, (bfloat16, float32)


@models.register('float32_only')
class Float32Only(models.base.Autoencoder):
  """A model of one's own without a dtype field."""


def test_bfloat16_is_refused_for_a_model_without_a_dtype_setting(cifar_config):
  config = cifar_config(dtype='bfloat16')
  config.model = {'name': 'float32_only'}
  with pytest.raises(config_checks.ConfigError, match=r"config.model: model 'float32_only' "
                     r'computes in float32 only \(it has no dtype field\), not in bfloat16; '
                     r'set --config.dtype=float32'):
    config_checks.check(config, jax.device_count())
