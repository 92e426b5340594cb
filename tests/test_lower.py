"""Every preset's train and eval steps lower for GPU and TPU, in float32 and bfloat16, with no
host callbacks and no custom calls that only the CPU has: a step that would not run there
fails here, on a CPU-only machine (jax.export with platforms=; nothing is compiled or run)."""
import contextlib
import functools
import re
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar, cifar_prior
from conftest import tiny
from convae_jax import (config_checks, losses, models, optimizer, perceptual, prior_train,
                        steps, trainer_config)
from convae_jax.models import priors
from convae_jax.cpu import kernels as cpu_kernels

# jax.export's platform names, with the jax.default_backend() of each.
PLATFORMS = {'cuda': 'gpu', 'tpu': 'tpu'}
DEVICES = 2  # The steps are pmapped over this many devices, so collectives span several.
IMAGE_SHAPE = (32, 32, 3)
NUM_TRAIN_STEPS = 1000  # For the learning-rate schedules: long enough for their warm-ups.

# The custom calls a step may lower to on GPU or TPU, with where each comes from. Any other
# fails the test: a CPU-only kernel (LAPACK, DUCC, a host callback) or a new GPU/TPU kernel,
# to check and then list here.
_PARTITIONER = 'a partitioner annotation, on every platform (JAX without Shardy emits it)'
ALLOWED_CUSTOM_CALLS = {
    'cusolver_potrf_ffi': "Cholesky on CUDA (vae-resnet's low-rank prior); TPU's is in HLO",
    'Sharding': _PARTITIONER,
    'SPMDFullToShardShape': _PARTITIONER,
    'SPMDShardToFullShape': _PARTITIONER,
}
# A custom call in the module's text, pretty-printed or generic.
_CUSTOM_CALL = re.compile(r'custom_call @([\w$.\-]+)|call_target_name = "([^"]+)"')


@contextlib.contextmanager
def _traced_as_on(platform: str):
  """Code that asks jax.default_backend() (config.kernels='auto', automatic micro-batches)
  takes the branch it takes on `platform`; JAX itself does not read this name."""
  with mock.patch.object(jax, 'default_backend', lambda: PLATFORMS[platform]):
    yield


def _primitives(jaxpr) -> set[str]:
  """The primitives of `jaxpr` and of the jaxprs inside it."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, 'jaxpr', sub)
        if hasattr(sub, 'eqns'):
          names |= _primitives(sub)
  return names


def _lower(make, platform: str) -> str:
  """The StableHLO text of `fn` jitted, for `platform`, with (fn, abstract args) = make()
  called as on that platform. A host callback fails with its name (jax.export refuses one,
  with an error that does not say so)."""
  with _traced_as_on(platform):
    fn, args = make()
    try:
      exported = jax.export.export(jax.jit(fn), platforms=(platform,))(*args)
    except Exception:  # pylint: disable=broad-except
      callbacks = sorted(name for name in _primitives(jax.make_jaxpr(fn)(*args).jaxpr)
                         if 'callback' in name)
      if callbacks:
        pytest.fail(f'host callbacks {", ".join(callbacks)}: they do not lower for {platform}')
      raise
  return exported.mlir_module()


def _unexpected_custom_calls(module_text: str) -> set[str]:
  return {a or b for a, b in _CUSTOM_CALL.findall(module_text)} - set(ALLOWED_CUSTOM_CALLS)


def _per_device(tree):
  """Abstract arrays with a leading device axis, as the pmapped steps take them."""
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct((DEVICES,) + s.shape, s.dtype, weak_type=s.weak_type), tree)


def _step(config, model, kind: str, kernels: str = 'auto'):
  """(the pmapped step as the trainer makes it, its abstract arguments)."""
  tx = optimizer.create_optimizer(config, NUM_TRAIN_STEPS)
  objective = losses.Objective(config.losses)
  state = _per_device(steps.abstract_train_state(model, tx, IMAGE_SHAPE, config.ema_decay,
                                                 objective))
  rng = jax.eval_shape(lambda: jax.random.key(0))
  if kind == 'train':
    images = jax.ShapeDtypeStruct((DEVICES, config.batch_size // DEVICES) + IMAGE_SHAPE,
                                  jnp.uint8)
    totals = _per_device(jax.eval_shape(
        steps.train_metrics_class(model, IMAGE_SHAPE, objective).empty))
    train_step = steps.make_train_step(config, model, IMAGE_SHAPE,
                                       num_train_steps=NUM_TRAIN_STEPS, accumulate=True)
    if not isinstance(train_step, functools.partial):  # No loss term reads constants.
      return train_step, (state, totals, images, rng)
    # The loss terms' constants as an argument, as the trainer passes them.
    constants = _per_device(jax.eval_shape(objective.constants))
    return (lambda *args: train_step.func(*args[:-1], constants=args[-1]),
            (state, totals, images, rng, constants))
  images = jax.ShapeDtypeStruct((DEVICES, config.eval_batch_size // DEVICES) + IMAGE_SHAPE,
                                jnp.uint8)
  mask = jax.ShapeDtypeStruct(images.shape[:2], jnp.bool_)
  eval_step = steps.make_eval_step(model, tuple(config.input_range), IMAGE_SHAPE, kernels)
  # The LPIPS weights as an argument, as the trainer passes them, not as constants.
  lpips = _per_device(jax.eval_shape(lambda: perceptual.weights(perceptual.EVAL_NETWORK)))
  return (lambda *args: eval_step.func(*args[:-1], lpips_params=args[-1]),
          (state, images, mask, rng, lpips))


@pytest.mark.parametrize('kind', ['train', 'eval'])
@pytest.mark.parametrize('dtype', trainer_config.DTYPES)
@pytest.mark.parametrize('preset', cifar.VARIANTS)
def test_preset_step_lowers_for_gpu_and_tpu(preset, dtype, kind):
  config = tiny(cifar.get_config(preset), dtype=dtype)
  config_checks.check(config, DEVICES)
  model = models.create_model(config.model, config.dtype)
  for platform in PLATFORMS:
    unexpected = _unexpected_custom_calls(_lower(lambda: _step(config, model, kind), platform))
    assert not unexpected, (
        f'{preset} {kind} step ({dtype}) on {platform} calls {", ".join(sorted(unexpected))}: '
        'a CPU-only kernel, or a GPU/TPU one to check and add to ALLOWED_CUSTOM_CALLS')


def _types(tree):
  return jax.tree.map(lambda s: (s.shape, s.dtype, s.weak_type), tree)


@pytest.mark.parametrize('preset, settings', [
    *((preset, {'dtype': dtype}) for preset in cifar.VARIANTS for dtype in trainer_config.DTYPES),
    *(('vqvae', settings) for settings in (
        {'ema_decay': 0.999}, {'accumulate_steps': 2}, {'micro_batches': 2},
        {'skip_grad_norm_above': 10.0}, {'on_non_finite': 'skip'}, {'grad_clip_norm': 1.0}))])
def test_the_train_step_returns_the_types_it_takes(preset, settings):
  # A fresh state's leaf that the step returns otherwise (a weak type: jnp.full(shape, 0.5)
  # with no dtype) makes the second step trace and compile again, on every fresh run.
  config = tiny(cifar.get_config(preset), **settings)
  config_checks.check(config, DEVICES)
  model = models.create_model(config.model, config.dtype)
  step, args = _step(config, model, 'train')
  state, totals = jax.eval_shape(step, *args)
  assert _types(state) == _types(args[0])
  assert _types(totals) == _types(args[1])


@pytest.mark.parametrize('dtype', trainer_config.DTYPES)
@pytest.mark.parametrize('preset', cifar_prior.PRESETS)
def test_prior_steps_and_sampling_lower_for_gpu_and_tpu(preset, dtype):
  config = tiny(cifar_prior.get_config(preset), dtype=dtype)
  grid = (8, 8)
  model = priors.create_prior(config.model, 512, grid, config.dtype)
  tx = optimizer.create_optimizer(config, NUM_TRAIN_STEPS)
  state = _per_device(steps.abstract_train_state(model, tx, grid, config.ema_decay))
  rng = jax.eval_shape(lambda: jax.random.key(0))
  codes = lambda batch: jax.ShapeDtypeStruct((DEVICES, batch // DEVICES) + grid, jnp.int32)
  totals = _per_device(jax.eval_shape(steps.train_metrics_class(model, grid).empty))
  train_step = steps.make_train_step(config, model, grid, num_train_steps=NUM_TRAIN_STEPS,
                                     accumulate=True)
  mask = jax.ShapeDtypeStruct((DEVICES, config.eval_batch_size // DEVICES), jnp.bool_)
  variables = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)},
                                                jnp.zeros((1,) + grid, jnp.int32)))
  made = {
      'train': lambda: (train_step, (state, totals, codes(config.batch_size), rng)),
      'eval': lambda: (prior_train.make_eval_step(model),
                       (state, codes(config.eval_batch_size), mask, rng)),
      'sample': lambda: (lambda v, r: priors.sample(model, v, r, 4, 1.0, 8), (variables, rng)),
  }
  for kind, make in made.items():
    for platform in PLATFORMS:
      unexpected = _unexpected_custom_calls(_lower(make, platform))
      assert not unexpected, f'{preset} {kind} ({dtype}) on {platform}: {unexpected}'
  # The train step returns the types it takes (test_the_train_step_returns_the_types_it_takes).
  args = made['train']()[1]
  assert _types(jax.eval_shape(train_step, *args)) == _types(args[:2])


@pytest.mark.parametrize('preset', ['cae', 'resae'])
def test_a_cpu_trained_run_evaluates_on_gpu_and_tpu(preset):
  # Its config.json names the CPU kernels, and evaluation computes with them anywhere.
  config = tiny(cifar.get_config(preset))
  model = models.create_model(config.model)
  every = ','.join(cpu_kernels.KERNELS)
  for platform in PLATFORMS:
    text = _lower(lambda: _step(config, model, 'eval', every), platform)
    assert not _unexpected_custom_calls(text)


def _pmapped(fn):
  return jax.pmap(lambda x: fn(jax.lax.pmean(x, steps.AXIS)), axis_name=steps.AXIS)


def test_lowering_fails_on_a_host_callback():
  callback = _pmapped(lambda x: jax.pure_callback(
      np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x))
  with pytest.raises(pytest.fail.Exception, match='host callbacks pure_callback'):
    _lower(lambda: (callback, (jax.ShapeDtypeStruct((DEVICES, 3, 3), jnp.float32),)), 'cuda')


def test_a_cpu_only_kernel_is_flagged():
  """jax.export lets a CPU LAPACK kernel into a GPU/TPU module (its target is a stable one);
  the allowlist does not."""
  potrf = _pmapped(lambda x: jax.ffi.ffi_call(
      'lapack_spotrf_ffi', jax.ShapeDtypeStruct(x.shape, x.dtype))(x))
  args = (jax.ShapeDtypeStruct((DEVICES, 3, 3), jnp.float32),)
  for platform in PLATFORMS:
    assert _unexpected_custom_calls(_lower(lambda: (potrf, args), platform)) == {
        'lapack_spotrf_ffi'}
