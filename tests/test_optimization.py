"""The research trainer's optimizer settings: schedules, clipping, weight decay, skipping,
gradient accumulation, and refusing a checkpoint of other settings."""
import json
import os

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from configs import cifar
from convae_jax import loop, models, optimizer, preemption, steps, train


@pytest.mark.parametrize('schedule', ['constant', 'warmup_cosine', 'warmup_linear',
                                      'warmup_rsqrt'])
def test_schedules_are_optaxs(schedule, cifar_config):
  config = cifar_config(schedule=schedule, warmup_steps=10, end_learning_rate=1e-5,
                        learning_rate=2e-3)
  fn = optimizer.learning_rate_schedule(config, 100)
  at = lambda step: float(fn(step))
  assert at(0) == 0.0 and at(5) == pytest.approx(1e-3) and at(10) == pytest.approx(2e-3)
  expected = {
      'constant': optax.warmup_constant_schedule(0.0, 2e-3, 10),
      'warmup_cosine': optax.warmup_cosine_decay_schedule(0.0, 2e-3, 10, 100, 1e-5),
      'warmup_linear': optax.join_schedules([optax.linear_schedule(0.0, 2e-3, 10),
                                             optax.linear_schedule(2e-3, 1e-5, 90)], [10]),
      'warmup_rsqrt': lambda step: 2e-3 / np.sqrt(1 + (step - 10) / 10) if step >= 10 else
                      2e-4 * step,
  }[schedule]
  for step in (3, 10, 37, 64, 99, 100):
    assert at(step) == pytest.approx(float(expected(step)), rel=1e-5), step
  # A fraction of the run instead of a number of steps.
  config.warmup_steps, config.warmup_fraction = 0, 0.1
  assert optimizer.warmup_steps(config, 200) == 20


def test_a_constant_rate_keeps_the_optimizer_state_of_earlier_runs(cifar_config):
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.zeros(2)}
  ours = optimizer.create_optimizer(cifar_config()).init(params)
  assert jax.tree.structure(ours) == jax.tree.structure(optax.adam(1e-3).init(params))


def test_clipping_bounds_the_gradient_norm(cifar_config):
  config = cifar_config(optimizer='sgd', learning_rate=1.0, grad_clip_norm=0.5)
  tx = optimizer.create_optimizer(config)
  grads = {'kernel': jnp.full((3, 3), 10.0)}
  updates, _ = tx.update(grads, tx.init(grads))
  assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-5)
  small = {'kernel': jnp.full((3, 3), 0.01)}
  updates, _ = tx.update(small, tx.init(small))
  np.testing.assert_allclose(updates['kernel'], -small['kernel'], rtol=1e-6)


def test_weight_decay_leaves_biases_and_norm_scales_alone(cifar_config):
  config = cifar_config(optimizer='adamw', weight_decay=0.1)
  model = models.create_model(cifar.model('resae'))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  tx = optimizer.create_optimizer(config)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  flat_old = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_new = jax.tree.leaves(new)
  names = {getattr(path[-1], 'key') for path, _ in flat_old}
  assert {'kernel', 'bias', 'scale'} <= names  # Convs and GroupNorms.
  for (path, old), updated in zip(flat_old, flat_new):
    if getattr(path[-1], 'key') == 'kernel':
      np.testing.assert_allclose(updated, old * (1 - 1e-3 * 0.1), rtol=1e-6)
    else:
      np.testing.assert_array_equal(updated, old)


def test_steps_with_a_large_gradient_norm_are_skipped_and_counted(cifar_config):
  config = cifar_config(skip_grad_norm_above=1e-9)  # Every step.
  model = models.create_model(config.model)
  state = flax.jax_utils.replicate(steps.create_train_state(
      model, optimizer.create_optimizer(config), jax.random.key(0), (32, 32, 3)))
  images = np.random.default_rng(0).integers(0, 256, (4, 2, 32, 32, 3), np.uint8)
  step = steps.make_train_step(config, model, (32, 32, 3), donate=False)
  new_state, first = step(state, images, jax.random.key(1))
  new_state, second = step(new_state, images, jax.random.key(1))
  totals = flax.jax_utils.unreplicate(first.merge(second)).compute()
  assert float(totals['skipped_steps']) == 2.0 and float(totals['last_kept_step']) == -np.inf
  assert int(flax.jax_utils.unreplicate(new_state).step) == 2
  jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)


def test_a_run_that_keeps_skipping_stops(cifar_config, tmp_path):
  config = cifar_config(skip_grad_norm_above=1e-9, max_consecutive_skips=1)
  with tfds.testing.mock_data(num_examples=20):
    with pytest.raises(FloatingPointError, match=r'step 2: the last 2 updates were skipped '
                       r'\(gradient norm above config.skip_grad_norm_above=1e-09\), more than '
                       r'config.max_consecutive_skips=1 in a row; stopped without saving'):
      train.train_and_evaluate(config, str(tmp_path))


def _straight_and_resumed(config, tmp_path, monkeypatch, stop_after: int, check_saved=None):
  """Final states of `config()` trained unstopped (in tmp_path/a) and stopped after step
  `stop_after` (as by SIGTERM: saved, then raised) then resumed (in tmp_path/b), on fake
  data; `check_saved(workdir)` looks at the stopped run's checkpoint first."""
  with tfds.testing.mock_data(num_examples=20):
    straight = train.train_and_evaluate(config(), str(tmp_path / 'a'))
    with monkeypatch.context() as patch:
      patch.setattr(loop, 'stop_agreed',
                    lambda stop, step, config, is_last: step == stop_after)
      with pytest.raises(preemption.Preempted):
        train.train_and_evaluate(config(), str(tmp_path / 'b'))
    if check_saved:
      check_saved(str(tmp_path / 'b'))
    resumed = train.train_and_evaluate(config(), str(tmp_path / 'b'))
  return straight, resumed


@pytest.mark.slow
def test_resumed_in_the_warm_up_equals_unstopped(cifar_config, tmp_path, monkeypatch):
  config = lambda: cifar_config(num_train_steps=6, schedule='warmup_cosine', warmup_steps=4,
                                grad_clip_norm=1.0)
  # Stopped after step 2 of the 4 of warm-up, resumed.
  straight, resumed = _straight_and_resumed(config, tmp_path, monkeypatch, 2)
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
  lines = [json.loads(l) for l in open(tmp_path / 'a' / 'metrics.jsonl', encoding='utf-8')]
  rates = {l['step']: l['train/learning_rate'] for l in lines if 'train/learning_rate' in l}
  assert rates[2] == pytest.approx((0.0 + 2.5e-4) / 2)  # The mean over steps 1 and 2.


def _accumulated_and_large_updates(config_of):
  """The parameter changes of 2 accumulated steps of 2 images per device, and of 1 step of
  the same 4 images per device."""
  images = np.random.default_rng(0).integers(0, 256, (2, 4, 2, 32, 32, 3), np.uint8)
  updates = []
  for k, batches in ((2, [images[0], images[1]]), (1, [np.concatenate(images, axis=1)])):
    config = config_of(accumulate_steps=k)
    model = models.create_model(config.model)
    initial = flax.jax_utils.replicate(steps.create_train_state(
        model, optimizer.create_optimizer(config), jax.random.key(0), (32, 32, 3)))
    train_step = steps.make_train_step(config, model, (32, 32, 3), donate=False)
    state = initial
    for i, batch in enumerate(batches):
      new_state, _ = train_step(state, batch, jax.random.key(1))
      if k == 2 and i == 0:  # Mid-accumulation: nothing applied yet.
        jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)
      state = new_state
    updates.append(jax.device_get(jax.tree.map(lambda new, old: (new - old)[0], state.params,
                                               initial.params)))
  return updates


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_accumulating_k_batches_equals_one_batch_k_times_larger(optimizer, cifar_config):
  config_of = lambda **k: cifar_config(optimizer=optimizer, learning_rate=0.01,
                                       grad_clip_norm=1.0, **k)
  accumulated, large = _accumulated_and_large_updates(config_of)
  for a, b in zip(jax.tree.leaves(accumulated), jax.tree.leaves(large)):
    assert np.abs(b).max() > 0  # The update moved every parameter.
    if optimizer == 'sgd':  # The update is the gradient itself: equal up to float rounding.
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    else:
      # Adam's first update is lr * g / (|g| + eps), about lr * sign(g): a gradient within
      # rounding of 0 may flip. All but such elements agree.
      close = np.isclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
      assert close.mean() > 0.99, close.mean()


@pytest.mark.slow
def test_ema_and_accumulation_resume_exactly_mid_accumulation(cifar_config, tmp_path,
                                                              monkeypatch):
  config = lambda: cifar_config(num_train_steps=6, accumulate_steps=2, ema_decay=0.9,
                                schedule='warmup_linear', warmup_steps=2, log_every_steps=1)

  def saved_mid_accumulation(workdir):
    checkpointer = train.checkpointing.Checkpointer(workdir, 3)
    saved = checkpointer.restore(steps.abstract_train_state(
        models.create_model(config().model), optimizer.create_optimizer(config(), 6), (32, 32, 3),
        0.9))
    checkpointer.close()
    assert (int(saved.step), int(saved.opt_state.mini_step)) == (3, 1)

  # Stopped after step 3, between the two steps of the second update; resumed.
  straight, resumed = _straight_and_resumed(config, tmp_path, monkeypatch, 3,
                                            saved_mid_accumulation)
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
  jax.tree.map(np.testing.assert_array_equal, straight.ema, resumed.ema)
  assert int(straight.opt_state.gradient_step) == 3
  lines = [json.loads(l) for l in open(tmp_path / 'a' / 'metrics.jsonl', encoding='utf-8')]
  rates = [l['train/learning_rate'] for l in lines if 'train/learning_rate' in l]
  # Steps 1-2 make update 0 (rate 0 at step 0), 3-4 update 1 (step 2: the peak), 5-6 update 2.
  assert rates[:4] == [0.0, 0.0, pytest.approx(1e-3), pytest.approx(1e-3)]


def test_a_checkpoint_of_other_training_settings_is_refused_and_kept(cifar_config, tmp_path):
  with tfds.testing.mock_data(num_examples=20):
    train.train_and_evaluate(cifar_config(num_train_steps=2), str(tmp_path))
    before = sorted(os.listdir(tmp_path / 'checkpoints'))
    with pytest.raises(train.checkpointing.IncompatibleCheckpointError,
                       match=r'checkpoint 2 in .* was written with other training settings '
                       r'\(state entry ema/count: this config has it and the checkpoint has '
                       r'not; .*\); resume with the config that wrote it'):
      train.train_and_evaluate(cifar_config(num_train_steps=4, ema_decay=0.9), str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before
  assert not (tmp_path / 'checkpoints_unreadable').exists()
