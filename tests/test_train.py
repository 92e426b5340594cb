"""The real training loop on fake data, on 4 fake CPU devices (see conftest.py)."""
import json
import os

import flax.jax_utils
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from convae_jax import (config_checks, evaluation, inference, input_pipeline, metrics, models,
                        optimizer, perceptual, steps, train)
from convae_jax import pixels as pixel_values

from conftest import run_cli, tiny


def _params_allclose(a, b, **kwargs):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, **kwargs)


def test_overfits_one_batch(cifar_config):
  config = cifar_config(learning_rate=1e-2)
  model = models.create_model(config.model)
  state = steps.create_train_state(model, optimizer.create_optimizer(config), jax.random.key(0),
                                   (32, 32, 3))
  step = steps.make_train_step(config, model, (32, 32, 3))
  # Smooth images (8x8 noise blown up 4x): a reconstructable signal, not white noise.
  coarse = np.random.default_rng(0).uniform(size=(4, 2, 8, 8, 3)).astype(np.float32)
  images = coarse.repeat(4, axis=2).repeat(4, axis=3)
  state = flax.jax_utils.replicate(state)
  losses = []
  for _ in range(150):
    state, update = step(state, images, jax.random.key(1))
    losses.append(float(flax.jax_utils.unreplicate(update).compute()['loss']))
  assert losses[-1] < 0.2 * losses[0], losses[::30]


@pytest.mark.parametrize('variant', ['cae', 'fsq'])
def test_micro_batches_average_to_the_whole_batch_step(cifar_config, variant):
  # Two parts of 4 images give the step of all 8 at once: same loss, same new parameters.
  # (A VQ bottleneck's data initialization and restarts, and FSQ's batch entropy term, are
  # per part: models/bottlenecks/.)
  from configs import cifar  # pylint: disable=g-import-not-at-top
  config = cifar_config(model=cifar.get_config(variant).model)
  if variant == 'fsq':
    config.model.bottleneck.entropy_weight = 0.0
  model = models.create_model(config.model)
  state = flax.jax_utils.replicate(steps.create_train_state(
      model, optimizer.create_optimizer(config), jax.random.key(0), (32, 32, 3)))
  images = np.random.default_rng(0).uniform(size=(4, 8, 32, 32, 3)).astype(np.float32)
  results = []
  for micro_batches in (1, 2):
    config.micro_batches = micro_batches
    step = steps.make_train_step(config, model, (32, 32, 3), donate=False)
    new_state, update = step(state, images, jax.random.key(1))
    results.append((new_state, float(flax.jax_utils.unreplicate(update).compute()['loss'])))
  (whole, whole_loss), (parts, parts_loss) = results
  np.testing.assert_allclose(parts_loss, whole_loss, rtol=1e-5)
  _params_allclose(parts.params, whole.params, rtol=1e-4, atol=1e-6)
  assert not np.array_equal(jax.tree.leaves(parts.params)[0], jax.tree.leaves(state.params)[0])


def _no_train_metrics(model):
  """A fresh window's totals, as the trainer makes them."""
  return steps.replicate(steps.train_metrics_class(model, (32, 32, 3)).empty())


def test_accumulating_step_merges_the_metrics_of_every_step(cifar_config):
  # The trainer's step carries the window's totals: the same state and the same totals as
  # the plain step with each step's metrics merged after it.
  config = cifar_config()
  model = models.create_model(config.model)
  state = steps.replicate(steps.create_train_state(
      model, optimizer.create_optimizer(config), jax.random.key(0), (32, 32, 3)))
  batches = np.random.default_rng(0).integers(0, 256, (3, 4, 2, 32, 32, 3), dtype=np.uint8)
  plain = steps.make_train_step(config, model, (32, 32, 3), donate=False)
  accumulating = steps.make_train_step(config, model, (32, 32, 3), donate=False,
                                       accumulate=True)
  empty = lambda: _no_train_metrics(model)
  plain_state, accumulated_state, expected, totals = state, state, None, empty()
  for images in batches:
    plain_state, update = plain(plain_state, images, jax.random.key(1))
    expected = update if expected is None else expected.merge(update)
    accumulated_state, totals = accumulating(accumulated_state, totals, images,
                                             jax.random.key(1))
  for a, b in zip(jax.tree.leaves(plain_state), jax.tree.leaves(accumulated_state)):
    np.testing.assert_array_equal(a, b)
  computed = flax.jax_utils.unreplicate(totals).compute()
  for name, value in flax.jax_utils.unreplicate(expected).compute().items():
    np.testing.assert_array_equal(computed[name], value, err_msg=name)
  assert float(computed['last_kept_step']) == 3.0


def test_the_trainer_compiles_its_train_step_once(cifar_config):
  # steps.replicate gives the arrays the steps' output sharding, and a metric collection is
  # one class per set of names: neither the first state nor a fresh window's totals make the
  # step compile again.
  config = cifar_config()
  model = models.create_model(config.model)
  step = steps.make_train_step(config, model, (32, 32, 3), accumulate=True)
  empty = lambda: _no_train_metrics(model)
  state, totals = steps.replicate(steps.create_train_state(
      model, optimizer.create_optimizer(config), jax.random.key(0), (32, 32, 3))), empty()
  fresh_totals = empty()
  images = np.zeros((4, 2, 32, 32, 3), np.uint8)
  compiles = []
  listener = lambda event, *_, **__: compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    state, totals = step(state, totals, images, jax.random.key(1))  # A window's first step,
    state, totals = step(state, totals, images, jax.random.key(1))  # its second,
    state, totals = step(state, fresh_totals, images, jax.random.key(1))  # the next window's.
    state, totals = step(state, totals, images, jax.random.key(1))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles.count('/jax/core/compile/backend_compile_duration') == 1, compiles


def test_train_step_normalizes_uint8_pixels_to_the_input_range(cifar_config):
  # The input pipeline streams uint8 pixels; the step maps them to input_range on the device,
  # the same step as on images normalized beforehand.
  config = cifar_config(input_range=(-1.0, 1.0))
  model = models.create_model(config.model)
  state = flax.jax_utils.replicate(steps.create_train_state(
      model, optimizer.create_optimizer(config), jax.random.key(0), (32, 32, 3)))
  pixels = np.random.default_rng(0).integers(0, 256, (4, 2, 32, 32, 3), dtype=np.uint8)
  pixels[0, 0, 0, 0] = (0, 255, 128)
  normalized = np.asarray(pixel_values.model_input(pixels, (-1.0, 1.0)))
  assert normalized.dtype == np.float32
  np.testing.assert_allclose(normalized[0, 0, 0, 0], [-1.0, 1.0, 1 / 255], atol=1e-6)
  step = steps.make_train_step(config, model, (32, 32, 3), donate=False)
  from_pixels, pixel_metrics = step(state, pixels, jax.random.key(1))
  from_floats, float_metrics = step(state, pixels / 127.5 - 1.0, jax.random.key(1))
  np.testing.assert_allclose(flax.jax_utils.unreplicate(pixel_metrics).compute()['loss'],
                             flax.jax_utils.unreplicate(float_metrics).compute()['loss'],
                             rtol=1e-6)
  _params_allclose(from_pixels.params, from_floats.params, rtol=1e-5, atol=1e-7)


def test_trains_evaluates_and_counts_every_eval_image_once(cifar_config, tmp_path):
  # 20 eval images, eval batch 8: the last batch holds 4 images and 4 of padding.
  config = cifar_config(eval_lpips=True)
  with tfds.testing.mock_data(num_examples=20):
    state = train.train_and_evaluate(config, str(tmp_path))
    eval_images = input_pipeline.load_split('cifar10', 'test', None).images
  assert int(state.step) == 4
  model = models.create_model(config.model)
  output = model.apply({'params': state.params}, eval_images.astype(np.float32) / 255.0)
  expected = metrics.image_metrics(output.reconstruction, eval_images / 255.0, (0.0, 1.0),
                                   perceptual.weights(perceptual.EVAL_NETWORK))
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl', encoding='utf-8')]
  final_eval = [l for l in lines if 'eval/mse' in l][-1]
  assert final_eval['step'] == 4
  for name in ('mse', 'psnr', 'ssim', 'lpips'):
    np.testing.assert_allclose(final_eval[f'eval/{name}'], float(np.mean(expected[name])),
                               rtol=1e-4)
  assert any('train/loss' in l for l in lines)
  assert os.path.exists(tmp_path / 'images' / 'reconstructions_4.png')
  assert os.path.exists(tmp_path / 'config.json')


@pytest.mark.slow
def test_resume_continues_to_the_same_parameters(cifar_config, tmp_path):
  with tfds.testing.mock_data(num_examples=20):
    straight = train.train_and_evaluate(cifar_config(num_train_steps=6), str(tmp_path / 'a'))
    train.train_and_evaluate(cifar_config(num_train_steps=4), str(tmp_path / 'b'))
    resumed = train.train_and_evaluate(cifar_config(num_train_steps=6), str(tmp_path / 'b'))
    # A finished run only reports: nothing changes.
    again = train.train_and_evaluate(cifar_config(num_train_steps=6), str(tmp_path / 'b'))
  assert int(resumed.step) == int(again.step) == 6
  # Bitwise: the data position and randomness are functions of (seed, step).
  _params_allclose(straight.params, resumed.params, rtol=0, atol=0)
  _params_allclose(straight.opt_state, resumed.opt_state, rtol=0, atol=0)
  _params_allclose(resumed.params, again.params, rtol=0, atol=0)
  assert sorted(os.listdir(tmp_path / 'b' / 'checkpoints')) == ['2', '4', '6']
  # The relaunch with a longer length saved its config beside the first, not over it.
  assert json.load(open(tmp_path / 'b' / 'config.json'))['num_train_steps'] == 4
  assert os.path.exists(tmp_path / 'b' / 'config.resumed_at_step_4.json')


def test_the_runs_cpu_kernels_are_recorded_and_its_evaluation_reproduces_bitwise(
    photo_data_dir, tmp_path):
  # A choice other than the default (one kernel of four): config.json records it, and
  # `convae evaluate` computes as the run did, its last evaluation bitwise.
  from configs import photos  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  config = tiny(photos.get_config('resae'), data_dir=photo_data_dir, num_train_steps=2,
                eval_batch_size=128, kernels='upsample_conv')
  train.train_and_evaluate(config, workdir)
  assert json.load(open(os.path.join(workdir, 'config.json')))['kernels'] == 'upsample_conv'
  code, _, stderr = run_cli('evaluate', '--workdir', workdir, '--output', tmp_path / 'e.json')
  assert code == 0, stderr
  evaluated = json.load(open(tmp_path / 'e.json'))['metrics']
  lines = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  trained = [line for line in lines if 'eval/psnr' in line][-1]
  for name in ('mse', 'psnr', 'ssim', 'loss'):
    assert evaluated[name] == trained[f'eval/{name}'], name
  # The checkpoint computes the same function with the plain modules (as on a GPU), but not
  # the same last bits: the equality above is not a coincidence.
  other = inference.load(workdir)
  other.config.kernels = 'none'
  plain = other.evaluate(batch_size=128)['mse']
  assert plain != evaluated['mse']
  np.testing.assert_allclose(plain, evaluated['mse'], rtol=1e-4)


@pytest.mark.parametrize('overrides,message', [
    ({'micro_batches': 3}, 'config.micro_batches=3 does not divide'),
    (dict(input_range=(-1.0, 1.0)), r'config.input_range=\(-1.0, 1.0\) lies outside .*\(0.0, 1.0\)'),
    (dict(batch_size=6), r'config.batch_size=6 does not divide over 4 devices'),
    (dict(eval_every_steps=0), r'config.eval_every_steps=0: must be a positive integer'),
    (dict(optimizer='lbfgs'), r"config.optimizer='lbfgs': known optimizers are adam"),
    (dict(kernels='upsample'), r"config.kernels='upsample': 'upsample' is not a CPU kernel; "
     r"use auto, none, or names from: pooled_conv, "),
])
def test_bad_configs_are_refused_before_training(cifar_config, tmp_path, overrides, message):
  with pytest.raises(config_checks.ConfigError, match=message):
    train.train_and_evaluate(cifar_config(**overrides), str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_unknown_model_is_refused(cifar_config, tmp_path):
  config = cifar_config()
  config.model.name = 'nope'
  with pytest.raises(config_checks.ConfigError, match="unknown model.name 'nope'; known: .*autoencoder"):
    train.train_and_evaluate(config, str(tmp_path))


def test_non_finite_loss_stops_without_saving(cifar_config, tmp_path):
  config = cifar_config(optimizer='sgd', learning_rate=1e30, num_train_steps=6)
  with tfds.testing.mock_data(num_examples=20):
    with pytest.raises(FloatingPointError, match=r'step 2: non-finite loss and gradients \(first at step 2\)'):
      train.train_and_evaluate(config, str(tmp_path))
  saved = os.listdir(tmp_path / 'checkpoints') if os.path.exists(tmp_path / 'checkpoints') else []
  assert '6' not in saved


def test_a_finished_run_relaunched_reads_no_data_and_writes_nothing(tmp_path, photo_data_dir,
                                                                    monkeypatch):
  from configs import photos  # pylint: disable=g-import-not-at-top
  from conftest import tiny  # pylint: disable=g-import-not-at-top
  config = tiny(photos.get_config(), data_dir=photo_data_dir, num_train_steps=2)
  trained = train.train_and_evaluate(config, str(tmp_path))
  listing = lambda: {name: os.path.getmtime(tmp_path / name) for name in os.listdir(tmp_path)
                     if name != '.lock'}  # The relaunch holds the lock while it looks.
  before = listing()

  def no_data(*args, **kwargs):
    raise AssertionError('a finished run read its data')

  monkeypatch.setattr(input_pipeline, 'load_split', no_data)
  again = train.train_and_evaluate(config, str(tmp_path))
  assert int(again.step) == 2
  _params_allclose(trained.params, again.params, rtol=0, atol=0)
  # No new events file, config or checkpoint; nothing rewritten.
  assert listing() == before


def test_each_eval_batch_draws_its_own_noise(cifar_config):
  """Identical batches under a random corruption give different losses: one key per batch."""
  config = cifar_config()
  from configs import cifar  # pylint: disable=g-import-not-at-top
  config.model = cifar.get_config('denoising').model
  model = models.create_model(config.model)
  state = steps.create_train_state(model, optimizer.create_optimizer(config), jax.random.key(0),
                                   (32, 32, 3))
  devices = jax.local_devices()
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
  p_eval_step = steps.make_eval_step(model, (0.0, 1.0), (32, 32, 3))
  replicated = flax.jax_utils.replicate(state, devices)
  evaluate = lambda split: evaluation.evaluate(
      p_eval_step, replicated, input_pipeline.eval_batches(
          split, global_batch_size=8, num_local_devices=len(devices)), devices,
      jax.random.key(1))[0]
  one = evaluate(input_pipeline.Split(images))
  two = evaluate(input_pipeline.Split(np.concatenate([images, images])))
  # With one key for every batch, two identical batches would average to one batch's loss.
  assert one['loss'] != two['loss']
  assert abs(one['loss'] - two['loss']) < 0.1 * one['loss']


def test_automatic_micro_batches_split_only_where_the_step_stays_exact(cifar_config):
  from configs import cifar  # pylint: disable=g-import-not-at-top

  def chosen(preset='cae', batch_size=128, devices=1, backend='cpu', **overrides):
    config = cifar_config(batch_size=batch_size, micro_batches=0)
    config.model = cifar.model(preset)
    for key, value in overrides.items():
      config.model[key].update(value)
    return steps.micro_batches(config, models.create_model(config.model), devices, backend,
                               (32, 32, 3))

  assert chosen() == 4 and chosen('resae') == 4 and chosen('vae') == 4
  assert chosen(batch_size=16) == 2 and chosen(batch_size=8) == 1  # Parts of 8 or more.
  assert chosen(batch_size=128, devices=8) == 2  # 16 images per device.
  assert chosen(backend='gpu') == chosen(backend='tpu') == 1
  # Statistics of each part would differ from the whole batch's: one part.
  assert chosen('vqvae') == chosen('vqvae-resnet') == 1
  assert chosen('fsq') == 1 and chosen('fsq', bottleneck={'entropy_weight': 0.0}) == 4
  assert chosen('resae', backbone={'normalization': 'batch'}) == 1
  config = cifar_config(batch_size=128, micro_batches=2)
  assert steps.micro_batches(config, models.create_model(cifar.model('vqvae')), 1, 'cpu',
                             (32, 32, 3)) == 2
