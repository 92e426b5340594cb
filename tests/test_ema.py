"""Weight EMA (config.ema_decay): the average's closed form, its checkpoint, and that
evaluation and inference use it."""
import json
import os

import flax.jax_utils
import jax
import numpy as np
import pytest

from configs import photos
from convae_jax import checkpointing, inference, models, optimizer, steps, train
from conftest import tiny


def test_ema_weights_are_the_debiased_average_of_the_weights_after_each_step(cifar_config):
  decay = 0.5
  config = cifar_config(optimizer='sgd', learning_rate=0.5, ema_decay=decay)
  model = models.create_model(config.model)
  state = steps.create_train_state(model, optimizer.create_optimizer(config), jax.random.key(0),
                                   (32, 32, 3), decay)
  assert isinstance(state, steps.EmaTrainState)
  jax.tree.map(np.testing.assert_array_equal, steps.ema_params(state, decay), state.params)
  state = flax.jax_utils.replicate(state)
  train_step = steps.make_train_step(config, model, (32, 32, 3), donate=False)
  rng = np.random.default_rng(0)
  seen = []  # The weights after each step.
  for _ in range(3):
    state, _ = train_step(state, rng.integers(0, 256, (4, 2, 32, 32, 3), np.uint8),
                          jax.random.key(1))
    seen.append(jax.device_get(flax.jax_utils.unreplicate(state).params))
  k = len(seen)
  # (1 - d) sum_i d^(k-i) p_i / (1 - d^k): the average of p_1..p_k only, not of the init.
  closed_form = jax.tree.map(
      lambda *p: sum((1 - decay) * decay**(k - i) * p[i - 1] for i in range(1, k + 1)) /
      (1 - decay**k), *seen)
  ours = jax.device_get(steps.ema_params(flax.jax_utils.unreplicate(state), decay))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), ours,
               closed_form)
  assert not np.allclose(ours['encoder']['conv1']['kernel'],
                         seen[-1]['encoder']['conv1']['kernel'])  # It is not the last weights.


def test_ema_state_survives_save_and_restore(cifar_config, tmp_path):
  config = cifar_config(ema_decay=0.9)
  model = models.create_model(config.model)
  tx = optimizer.create_optimizer(config)
  state = steps.create_train_state(model, tx, jax.random.key(0), (32, 32, 3), 0.9)
  state = state.replace(ema=state.ema._replace(
      count=np.int32(7), ema=jax.tree.map(lambda p: p * 0.5, state.ema.ema)))
  checkpointer = checkpointing.Checkpointer(str(tmp_path), 3)
  checkpointer.save(7, jax.device_get(state))
  restored = checkpointer.restore_newest_readable(
      steps.abstract_train_state(model, tx, (32, 32, 3), 0.9))
  checkpointer.close()
  assert int(restored.ema.count) == 7
  jax.tree.map(np.testing.assert_array_equal, restored.ema.ema, jax.device_get(state.ema.ema))


@pytest.fixture(scope='module')
def ema_workdir(tmp_path_factory, photo_data_dir):
  """A cae trained for 6 steps with EMA, evaluated at steps 3 and 6."""
  workdir = str(tmp_path_factory.mktemp('ema'))
  config = tiny(photos.get_config('cae'), data_dir=photo_data_dir, num_train_steps=6,
                eval_every_steps=3, checkpoint_every_steps=3, ema_decay=0.5,
                learning_rate=1e-2, eval_batch_size=128)
  train.train_and_evaluate(config, workdir)
  return workdir


def test_evaluation_reports_the_ema_weights_and_the_raw_ones(ema_workdir):
  with open(os.path.join(ema_workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    evals = [l for l in map(json.loads, f) if 'eval/mse' in l]
  assert [l['step'] for l in evals] == [3, 6]
  for line in evals:
    assert {'eval_raw/mse', 'eval_raw/psnr', 'eval_raw/ssim'} <= set(line)
    assert line['eval/mse'] != line['eval_raw/mse']
  # inference evaluates the same weights as the trainer's eval/ (and eval_raw/ with raw).
  ema = inference.load(ema_workdir)
  raw = inference.load(ema_workdir, weights='raw')
  assert (ema.weights, raw.weights) == ('ema', 'raw')
  assert ema.evaluate()['mse'] == pytest.approx(evals[-1]['eval/mse'], rel=1e-4)
  assert raw.evaluate()['mse'] == pytest.approx(evals[-1]['eval_raw/mse'], rel=1e-4)


def test_inference_loads_the_ema_weights_by_default(ema_workdir):
  config = inference.trainer_config.completed(inference.read_config(
      os.path.join(ema_workdir, 'config.json')))
  model = models.create_model(config.model)
  checkpointer = checkpointing.Checkpointer(ema_workdir, 3)
  saved = checkpointer.restore(steps.abstract_train_state(
      model, optimizer.create_optimizer(config), (8, 8, 3), config.ema_decay), 6)
  checkpointer.close()
  loaded = inference.load(ema_workdir)
  jax.tree.map(np.testing.assert_allclose, loaded.state.params,
               jax.device_get(steps.ema_params(saved, config.ema_decay)))
  jax.tree.map(np.testing.assert_array_equal, inference.load(ema_workdir, weights='raw')
               .state.params, saved.params)


def test_the_results_table_shows_both_weights_of_an_ema_run(ema_workdir, capsys):
  from tools import results_table  # pylint: disable=g-import-not-at-top
  assert results_table.main([f'cae={ema_workdir}']) == 0
  rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith('| cae')]
  with open(os.path.join(ema_workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    last = [l for l in map(json.loads, f) if 'eval/mse' in l][-1]
  assert rows[0].startswith('| cae (EMA weights) |') and f'{last["eval/mse"]:.5f}' in rows[0]
  assert rows[1].startswith('| cae (raw weights) |') and f'{last["eval_raw/mse"]:.5f}' in rows[1]
