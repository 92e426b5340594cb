"""The seed model: shapes, parameter count, full convolutionality, registries."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from configs import cifar
from convae_jax import models


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
