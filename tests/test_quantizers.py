"""VQ and FSQ bottlenecks: the grid, straight-through gradients, codebook initialization and
dead-code restarts, agreement across devices, and code usage over a whole split."""
import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar
from convae_jax import evaluation, input_pipeline, metrics, models, optimizer, steps
from convae_jax.models.bottlenecks import fsq

from conftest import tiny


def _vq(**settings):
  return models.BOTTLENECKS.create({'name': 'vq', **settings})


def _model(preset, **parts):
  config = cifar.model(preset)
  for kind, settings in parts.items():
    config[kind] = settings
  return models.create_model(config)


def test_fsq_outputs_lie_on_its_grid_and_indices_round_trip():
  grid = fsq.Grid((8, 5, 3))
  assert grid.size == 120
  z = jax.random.normal(jax.random.key(0), (1000, 3)) * 4.0
  quantized = grid.quantize(z)
  steps_ = np.asarray(quantized * grid.half_width)
  np.testing.assert_allclose(steps_, np.round(steps_), atol=1e-5)  # Integer grid steps.
  assert steps_[:, 0].min() == -4 and steps_[:, 0].max() == 3  # 8 levels: -4..3.
  assert set(np.unique(np.round(steps_[:, 1]))) == {-2, -1, 0, 1, 2}  # 5 levels.
  assert set(np.unique(np.round(steps_[:, 2]))) == {-1, 0, 1}
  every = jnp.arange(grid.size)
  np.testing.assert_array_equal(grid.indices(grid.points(every)), every)
  np.testing.assert_allclose(grid.points(grid.indices(quantized)), quantized, atol=1e-6)


def test_fsq_gradients_pass_the_rounding():
  grid = fsq.Grid((8, 8, 8))
  z = jax.random.normal(jax.random.key(0), (16, 3))
  weights = jax.random.normal(jax.random.key(1), (16, 3))
  grads = jax.grad(lambda z: jnp.sum(grid.quantize(z) * weights))(z)
  # Straight-through: the gradient of the bound alone, nonzero everywhere.
  np.testing.assert_allclose(grads, jax.grad(lambda z: jnp.sum(grid.bound(z) * weights))(z) /
                             grid.half_width, rtol=1e-6)
  assert np.all(np.abs(grads) > 0)


def test_fsq_bottleneck_codes_and_no_codebook_loss():
  model = _model('fsq', bottleneck={'name': 'fsq', 'levels': (8, 8, 8)})
  assert model.num_codes == 512
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  output = model.apply(variables, jax.random.uniform(jax.random.key(1), (2, 16, 16, 3)))
  assert set(output.losses) == {'mse'} and output.codes.shape == (2, 4, 4)
  # The preset adds the entropy term, and nothing else.
  preset = _model('fsq')
  assert set(preset.apply(variables, jnp.zeros((2, 16, 16, 3))).losses) == {'mse', 'entropy'}
  assert 0 <= int(output.codes.min()) and int(output.codes.max()) < 512


def test_fsq_entropy_term_rewards_a_batch_spread_over_the_grid():
  grid = fsq.Grid((8, 8, 8))
  spread = grid.points(jnp.arange(512)) * grid.half_width  # One position on each point.
  term = lambda bounded: float(fsq.entropy_term(grid, bounded, 0.1))
  # Sure of each point: per-position entropy ~0; batch entropy log(512) when spread, 0 when not.
  assert term(spread) == pytest.approx(-np.log(512), abs=0.05)
  assert term(jnp.zeros_like(spread)) == pytest.approx(0.0, abs=0.05)
  quantizer = models.BOTTLENECKS.create({'name': 'fsq', 'entropy_weight': 1.0})
  features = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  variables = quantizer.init(jax.random.key(1), features, True, 1)
  output = quantizer.apply(variables, features, True, 1)
  assert output.losses['entropy'].shape == (2,)


def test_fsq_entropy_weight_decays_to_zero_over_the_training_steps_it_names():
  features = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  constant = models.BOTTLENECKS.create({'name': 'fsq', 'entropy_weight': 1.0})
  variables = constant.init(jax.random.key(1), features, True, 1)
  full = float(constant.apply(variables, features, True, 1).losses['entropy'][0])
  decaying = models.BOTTLENECKS.create(
      {'name': 'fsq', 'entropy_weight': 1.0, 'entropy_decay_steps': 4})
  variables = {**variables, **decaying.init(jax.random.key(1), features, True, 1)}
  assert float(variables['counters']['steps_seen']) == 0.0
  seen = []
  for _ in range(6):
    output, updates = decaying.apply(variables, features, True, 1, mutable=['counters'])
    variables = {**variables, **updates}
    seen.append(float(output.losses['entropy'][0]))
  np.testing.assert_allclose(seen, [full * w for w in (1, 0.75, 0.5, 0.25, 0, 0)], rtol=1e-5,
                             atol=1e-7)
  # Evaluation neither counts a step nor changes the weight.
  output, updates = decaying.apply(variables, features, False, 1, mutable=['counters'])
  assert float(updates['counters']['steps_seen']) == 6.0 and float(
      output.losses['entropy'][0]) == 0.0
  with pytest.raises(ValueError, match='entropy_decay_steps'):
    models.BOTTLENECKS.create({'name': 'fsq', 'entropy_decay_steps': -1})


@pytest.mark.parametrize('codebook', ['ema', 'learned'])
def test_vq_gradients_pass_the_straight_through_estimator(codebook):
  model = _model('vqvae', bottleneck={'name': 'vq', 'num_codes': 16, 'codebook': codebook})
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  images = jax.random.uniform(jax.random.key(2), (4, 16, 16, 3))

  def mse(params):
    output, _ = model.apply({**variables, 'params': params}, images, train=True, mutable=['vq'])
    return jnp.mean(output.losses['mse'])

  grads = jax.grad(mse)(variables['params'])
  # The encoder only reaches the reconstruction through the quantizer's argmin.
  assert float(jnp.abs(grads['encoder']['conv1']['kernel']).sum()) > 0.0
  output = model.apply(variables, images)
  assert set(output.losses) == ({'mse', 'commitment', 'codebook'} if codebook == 'learned'
                                else {'mse', 'commitment'})


def _train_quantizer(quantizer, z, steps_, variables=None):
  variables = variables or quantizer.init(jax.random.key(0), z, False, 1)
  apply = jax.jit(lambda v, z: quantizer.apply(v, z, True, 1, mutable=['vq']))
  for _ in range(steps_):
    output, updates = apply(variables, z)
    variables = {**variables, **updates}
  return output, variables


def test_vq_ema_codebook_moves_towards_assigned_vectors():
  quantizer = _vq(num_codes=4, ema_decay=0.5, init_from_data=False, restart_dead_codes=False)
  z = jnp.full((1, 1, 1, 2), 3.0)
  variables = quantizer.init(jax.random.key(0), z, False, 1)
  codebook = lambda v: np.asarray(v['vq']['embed_sum'] / v['vq']['cluster_size'][:, None])
  code = int(quantizer.apply(variables, z, False, 1).codes.ravel()[0])
  projection = variables['params']['to_code']
  target = np.asarray(z.reshape(1, 2) @ projection['kernel'] + projection['bias'])[0]
  _, trained = _train_quantizer(quantizer, z, 1, variables)
  before = np.linalg.norm(codebook(variables)[code] - target)
  after = np.linalg.norm(codebook(trained)[code] - target)
  assert after < 0.6 * before


@pytest.mark.parametrize('codebook', ['ema', 'learned'])
def test_vq_codebook_starts_from_encoder_outputs(codebook):
  quantizer = _vq(num_codes=4, codebook=codebook, restart_dead_codes=False)
  z = jax.random.normal(jax.random.key(0), (2, 3, 3, 5)) * 10.0
  variables = quantizer.init(jax.random.key(1), z, False, 1)
  assert float(variables['vq']['initialized']) == 0.0
  output, trained = _train_quantizer(quantizer, z, 1, variables)
  assert float(trained['vq']['initialized']) == 1.0
  # The first step quantized to encoder outputs themselves: evenly spread rows of the batch.
  projected = (z.reshape(-1, 5) @ variables['params']['to_code']['kernel'] +
               variables['params']['to_code']['bias'])
  rows = np.asarray(projected)[np.linspace(0, 17, 4).astype(int)]
  quantized = np.asarray(output.latents).reshape(-1, 5)  # No projection back: code_dim = 5.
  assert all(np.min(np.linalg.norm(rows - q, axis=1)) < 1e-4 for q in quantized)


def test_vq_restarts_codes_that_no_input_chose():
  # A codebook far from the data: at first one code takes every input.
  quantizer = _vq(num_codes=8, code_dim=2, init_from_data=False, ema_decay=0.5,
                  dead_code_threshold=0.5)
  z = jax.random.normal(jax.random.key(0), (4, 4, 4, 3))
  variables = quantizer.init(jax.random.key(1), z, False, 1)
  far = {**variables['vq'], 'embed_sum': variables['vq']['embed_sum'] + 40.0 / 8}
  variables = {**variables, 'vq': far}
  used_before = len(np.unique(quantizer.apply(variables, z, False, 1).codes))
  assert used_before <= 2
  _, trained = _train_quantizer(quantizer, z, 8, variables)
  used_after = len(np.unique(quantizer.apply(trained, z, False, 1).codes))
  assert used_after >= 6, used_after
  # Without restarts the dead codes stay dead.
  frozen = _vq(num_codes=8, code_dim=2, init_from_data=False, ema_decay=0.5,
               restart_dead_codes=False)
  _, untouched = _train_quantizer(frozen, z, 8, variables)
  assert len(np.unique(frozen.apply(untouched, z, False, 1).codes)) <= 2


def _run(config, model, images, num_devices):
  """Three train steps on a fixed global batch split over `num_devices` devices."""
  devices = jax.local_devices()[:num_devices]
  state = steps.create_train_state(model, optimizer.create_optimizer(config), jax.random.key(0),
                                   images.shape[1:])
  state = flax.jax_utils.replicate(state, devices)
  p_train_step = steps.make_train_step(config, model, images.shape[1:], donate=False)
  batch = images.reshape((num_devices, -1) + images.shape[1:])
  for _ in range(3):
    state, _ = p_train_step(state, batch, jax.random.key(1))
  # (Not flax's unreplicate: it keeps the device axis of a 1-device pmap among 4 devices.)
  return jax.tree.map(lambda x: np.asarray(x)[0], state)


@pytest.mark.parametrize('codebook', ['ema', 'learned'])
def test_vq_agrees_across_devices(codebook):
  # Codebook statistics, data initialization and restarts over 4 devices reach what one
  # device reaches on the same global batch.
  config = tiny(cifar.get_config('vqvae'), batch_size=16)
  config.model.backbone.features = (4, 8)
  config.model.bottleneck.update(num_codes=16, codebook=codebook, dead_code_threshold=0.9,
                                 ema_decay=0.5)
  model = models.create_model(config.model)
  images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), np.uint8)
  one, four = _run(config, model, images, 1), _run(config, model, images, 4)
  assert float(one.model_state['vq']['bottleneck_part']['initialized']) == 1.0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               (one.params, one.model_state), (four.params, four.model_state))


def test_split_usage_counts_each_eval_image_once():
  model = _model('vqvae', bottleneck={'name': 'vq', 'num_codes': 32})
  config = tiny(cifar.get_config('vqvae'))
  state = steps.create_train_state(model, optimizer.create_optimizer(config), jax.random.key(0),
                                   (8, 8, 3))
  devices = jax.local_devices()
  images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), np.uint8)
  p_eval_step = steps.make_eval_step(model, (0.0, 1.0), (8, 8, 3))
  # 10 images in batches of 8 over 4 devices: the last batch is padded.
  scalars, counts = evaluation.evaluate(
      p_eval_step, flax.jax_utils.replicate(state, devices),
      input_pipeline.eval_batches(input_pipeline.Split(images), global_batch_size=8,
                                  num_local_devices=len(devices)), devices, jax.random.key(1))
  codes = model.apply({'params': state.params, **state.model_state},
                      images.astype(np.float32) / 255.0).codes
  expected = np.bincount(np.asarray(codes).ravel(), minlength=32)
  np.testing.assert_array_equal(counts, expected)
  assert counts.sum() == 10 * 2 * 2
  share = expected / expected.sum()
  assert scalars['codes_used'] == pytest.approx(np.mean(expected > 0))
  assert scalars['code_perplexity'] == pytest.approx(
      np.exp(-np.sum(share[share > 0] * np.log(share[share > 0]))), rel=1e-5)


def test_code_statistics_of_known_histograms():
  uniform = metrics.code_statistics(np.full(8, 5.0))
  assert uniform['codes_used'] == 1.0 and uniform['code_perplexity'] == pytest.approx(8.0)
  half = metrics.code_statistics(np.array([3.0, 0.0, 3.0, 0.0]))
  assert half['codes_used'] == 0.5 and half['code_perplexity'] == pytest.approx(2.0)
