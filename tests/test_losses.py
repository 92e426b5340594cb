"""Loss terms beyond the model's (config.losses): LPIPS, and an adversarial term whose
discriminator trains in the same step with its own optimizer state, VQGAN's adaptive weight,
exact resume, the new presets through launch.py, and the refusals."""
import json
import os
import subprocess
import sys

import flax.jax_utils
import flax.struct
import flax.training.train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import cifar
from conftest import REPO, train_through_launch
from convae_jax import (checkpointing, config_checks, losses, models, optimizer, perceptual,
                        steps)

SHAPE = (32, 32, 3)


def _images(seed=0):
  """A batch of 8 smooth images per device, the same on every device [devices, 8, ...]."""
  coarse = np.random.default_rng(seed).uniform(size=(8, 8, 8, 3)).astype(np.float32)
  batch = coarse.repeat(4, axis=1).repeat(4, axis=2)
  return np.broadcast_to(batch, (jax.local_device_count(),) + batch.shape).copy()


def _config(cifar_config, preset='resae', batch_size=8, micro_batches=1, **terms):
  config = cifar_config(model=cifar.get_config(preset).model, batch_size=batch_size,
                        micro_batches=micro_batches)
  config.losses = ml_collections.ConfigDict(terms)
  return config


def _adversarial(**settings):
  return {'weight': 0.5, 'start_step': 0, 'loss': 'hinge', 'adaptive_weight': True,
          'discriminator': {'name': 'patchgan', 'widths': (16, 32)}, **settings}


def _step(config, state=None):
  """(state before, state after one train step, the step's metrics)."""
  model = models.create_model(config.model)
  objective = losses.Objective(config.losses)
  if state is None:
    state = steps.create_train_state(model, optimizer.create_optimizer(config),
                                     jax.random.key(0), SHAPE, objective=objective)
  replicated = flax.jax_utils.replicate(state)
  new, update = steps.make_train_step(config, model, SHAPE, donate=False)(
      replicated, _images(), jax.random.key(1))
  return state, flax.jax_utils.unreplicate(new), flax.jax_utils.unreplicate(update).compute()


def _assert_trees_equal(a, b, **tolerance):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, **(tolerance or {'rtol': 0, 'atol': 0}))


def test_terms_at_weight_zero_leave_the_models_step_as_it_was(cifar_config):
  _, plain, _ = _step(_config(cifar_config))
  _, weighted, values = _step(_config(cifar_config, lpips={'weight': 0.0},
                                      adversarial=_adversarial(weight=0.0)))
  _assert_trees_equal(plain.params, weighted.params, rtol=1e-6, atol=1e-7)
  assert values['loss_lpips'] > 0 and 'adversarial_logits_real' in values


def test_the_loss_is_the_models_terms_plus_the_weighted_lpips(cifar_config):
  _, _, values = _step(_config(cifar_config, lpips={'weight': 0.3, 'network': 'alexnet'}))
  np.testing.assert_allclose(values['loss'], values['loss_mse'] + 0.3 * values['loss_lpips'],
                             rtol=1e-6)
  assert values['loss_lpips'] > 0 and 'loss_lpips' not in _step(_config(cifar_config))[2]


def test_the_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_output_layer():
  path = ('decoder', 'out', 'kernel')
  other = {'decoder': {'out': {'kernel': jnp.array([3.0, 4.0])}, 'b': jnp.ones(9)}}
  term = {'decoder': {'out': {'kernel': jnp.array([0.0, 1.0])}, 'b': jnp.zeros(9)}}
  np.testing.assert_allclose(losses.adaptive_weight(other, term, path), 5.0 / (1.0 + 1e-4))
  zero = jax.tree.map(jnp.zeros_like, term)
  assert float(losses.adaptive_weight(other, zero, path)) == losses.objective.MAX_ADAPTIVE_WEIGHT


def test_the_models_update_is_its_gradient_plus_the_adaptively_weighted_term(cifar_config):
  # SGD at rate 1: the update is minus the gradient, computed here without the trainer.
  config = _config(cifar_config, adversarial=_adversarial(weight=0.5))
  config.optimizer, config.learning_rate = 'sgd', 1.0
  state, new, values = _step(config)
  model = models.create_model(config.model)
  term = losses.Objective(config.losses).terms['adversarial']
  images = jnp.asarray(_images()[0])
  discriminator = state.networks['adversarial'].params

  def reconstruction(params):
    return model.apply({'params': params}, images, train=True).reconstruction

  mse = jax.grad(lambda p: jnp.mean(model.apply({'params': p}, images, train=True).losses['mse']))
  adversarial = jax.grad(lambda p: jnp.mean(term(losses.TermInputs(
      images=images, reconstruction=reconstruction(p), step=jnp.zeros((), jnp.int32),
      constants={}, params=discriminator))[0]))
  g_mse, g_adversarial = mse(state.params), adversarial(state.params)
  at = lambda g: g['decoder']['to_image']['kernel']
  weight = float(optax.tree.norm(at(g_mse)) / (optax.tree.norm(at(g_adversarial)) + 1e-4))
  np.testing.assert_allclose(values['adversarial_adaptive_weight'], weight, rtol=1e-4)
  expected = jax.tree.map(lambda p, a, b: p - (a + 0.5 * weight * b), state.params, g_mse,
                          g_adversarial)
  _assert_trees_equal(new.params, expected, rtol=1e-4, atol=1e-6)


def test_the_discriminator_trains_from_its_start_step_only(cifar_config):
  waiting = _config(cifar_config, adversarial=_adversarial(start_step=5))
  before, after, values = _step(waiting)
  _assert_trees_equal(before.networks['adversarial'].params, after.networks['adversarial'].params)
  assert values['loss_adversarial'] == 0.0
  started = _config(cifar_config, adversarial=_adversarial(start_step=0))
  before, after, values = _step(started)
  # Every kernel moves (the hinge loss's gradient at the output bias is 0 while real and
  # fake logits sit inside the margin alike).
  kernels = lambda state: [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(
      state.networks['adversarial'].params) if 'kernel' in jax.tree_util.keystr(path)]
  assert all(not np.array_equal(a, b) for a, b in zip(kernels(before), kernels(after)))
  assert int(after.networks['adversarial'].step) == 1
  for name in ('discriminator_loss', 'logits_real', 'logits_fake'):
    assert np.isfinite(values[f'adversarial_{name}'])
  # The model's parameters are not the discriminator's: its update leaves them alone.
  assert set(after.params) == set(before.params)


def test_automatic_micro_batches_keep_an_adaptive_weight_whole(cifar_config):
  lpips = _config(cifar_config, lpips={'weight': 1.0}, batch_size=128, micro_batches=0)
  adaptive = _config(cifar_config, lpips={'weight': 1.0}, adversarial=_adversarial(),
                     batch_size=128, micro_batches=0)
  model = models.create_model(lpips.model)
  assert steps.micro_batches(lpips, model, 4, 'cpu', SHAPE) == 4
  assert steps.micro_batches(adaptive, model, 4, 'cpu', SHAPE) == 1


@pytest.mark.slow
def test_the_crash_script_ends_with_the_unstopped_runs_discriminator(tmp_path, photo_data_dir):
  # SIGKILLed and relaunched: the final state, the discriminator's parameters and Adam moments
  # included (tools/crash_test.py compares every leaf of the saved state), equals the
  # unstopped run's bitwise.
  # Compiled with XLA's optimizations: unoptimized, LPIPS and the discriminator's double
  # backward pass take seconds a step.
  env = {k: v for k, v in os.environ.items() if k != 'JAX_DISABLE_MOST_OPTIMIZATIONS'}
  result = subprocess.run(
      [sys.executable, 'tools/crash_test.py', '--kills', '1', '--seed', '1', '--after_step',
       '16', '--min_delay', '0', '--max_delay', '1', '--workdir', str(tmp_path), '--',
       '--config', 'configs/photos.py:vqgan-resnet', f'--config.data_dir={photo_data_dir}',
       '--config.num_train_steps=40', '--config.batch_size=16',
       '--config.checkpoint_every_steps=5', '--config.eval_every_steps=100000',
       '--config.eval_lpips=False', '--config.losses.adversarial.start_step=10',
       '--config.profile_num_steps=0'],
      cwd=REPO, env=dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=1'),
      capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  report = json.load(open(tmp_path / 'report.json', encoding='utf-8'))
  assert report['final_state_equal'] is True
  # Killed once the discriminator trained, and resumed from a checkpoint of it (step 16 is
  # logged after step 15's checkpoint is complete).
  assert report['kills'] == 1 and report['events'][0]['resumed_from'] >= 15, report['events']


@pytest.mark.slow
@pytest.mark.parametrize('preset', ['vqgan-resnet', 'klae-resnet'])
def test_the_presets_train_through_launch(preset, tmp_path, photo_data_dir):
  train_lines, final_eval = train_through_launch(
      f'configs/photos.py:{preset}', tmp_path, photo_data_dir,
      '--config.losses.adversarial.start_step=4', optimized=True)
  assert train_lines[0]['train/loss_adversarial'] == 0.0  # Steps 1-4: before the start.
  last = train_lines[-1]
  assert last['train/loss_adversarial'] != 0.0
  for name in ('loss_lpips', 'adversarial_adaptive_weight', 'adversarial_discriminator_loss',
               'adversarial_logits_real', 'adversarial_logits_fake'):
    assert np.isfinite(last[f'train/{name}'])
  assert 0 < final_eval['eval/lpips'] < 1
  bottleneck_metric = {'vqgan-resnet': 'eval/codes_used', 'klae-resnet': 'eval/kl'}[preset]
  assert bottleneck_metric in final_eval, final_eval


@pytest.mark.parametrize('change, message', [
    (lambda c: c.losses.update({'lpipz': {'weight': 1.0}}),
     'config.losses.lpipz: no such loss term; known: adversarial, lpips'),
    (lambda c: c.losses.adversarial.update({'discriminator': {'name': ''}}),
     'config.losses.adversarial: no discriminator; set losses.adversarial.discriminator.name '
     'to one of: patchgan'),
    (lambda c: c.losses.adversarial.update({'loss': 'wasserstein'}),
     "config.losses.adversarial: loss='wasserstein'; allowed: hinge, non_saturating"),
    (lambda c: c.losses.lpips.update({'weight': -1.0}),
     'config.losses.lpips: weight=-1.0 must be a number >= 0'),
    (lambda c: c.losses.lpips.update({'network': 'resnet'}),
     "config.losses.lpips: network='resnet'; allowed: alexnet, vgg16"),
    (lambda c: c.losses.adversarial.discriminator.update({'widths': (64,)}),
     "config.losses.adversarial.discriminator 'patchgan': widths=(64,) must have two or more"),
    (lambda c: c.update({'micro_batches': 2}),
     'config.micro_batches=2: the adaptive weight of config.losses.adversarial is one of the '
     'whole batch; set --config.micro_batches=1'),
    (lambda c: c.model.update({'image_channels': 4}),
     'config.losses.lpips: LPIPS measures images of 1 or 3 channels, not 4'),
])
def test_bad_loss_terms_are_refused_in_one_line(cifar_config, change, message):
  config = cifar_config(model=cifar.get_config('vqgan-resnet').model)
  config.losses = cifar.losses('vqgan-resnet')
  change(config)
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.check(config, 4)
  assert str(error.value).startswith(message) and '\n' not in str(error.value)


def test_every_preset_lists_every_setting_of_its_terms():
  config = cifar.get_config('vqgan-resnet')
  assert set(config.losses) == {'lpips', 'adversarial'}
  assert set(config.losses.adversarial) == {'weight', 'start_step', 'loss', 'adaptive_weight',
                                            'discriminator'}
  assert set(config.losses.adversarial.discriminator) == {'name', 'widths', 'normalization'}
  assert not cifar.get_config('vqvae-resnet').losses
  assert perceptual.NETWORKS == ('alexnet', 'vgg16')


def test_checkpoints_written_before_loss_terms_existed_still_restore(cifar_config, tmp_path):
  # The train state of earlier versions: no field for the terms' networks. A state without
  # networks is saved as it was then, and a checkpoint of then restores (not set aside).
  class EarlierTrainState(flax.training.train_state.TrainState):
    model_state: object = flax.struct.field(default_factory=dict)

  config = cifar_config()
  model = models.create_model(config.model)
  tx = optimizer.create_optimizer(config)
  state = steps.create_train_state(model, tx, jax.random.key(0), SHAPE)
  earlier = EarlierTrainState.create(apply_fn=None, params=state.params, tx=tx,
                                     model_state=state.model_state)
  saver = checkpointing.Checkpointer(str(tmp_path), 3)
  saver.save(1, jax.device_get(earlier))
  saver.close()
  reader = checkpointing.Checkpointer(str(tmp_path), 3)
  restored = reader.restore_newest_readable(steps.abstract_train_state(
      model, tx, SHAPE, objective=losses.Objective(config.losses)))
  reader.close()
  assert type(restored) is steps.TrainState
  _assert_trees_equal(restored.params, state.params)
