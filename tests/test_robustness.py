"""Training never loses work: exact resume, SIGTERM, unreadable checkpoints, non-finite values,
bad configs, busy or foreign workdirs, and SIGKILL at random moments."""
import json
import os
import signal
import subprocess
import sys
import time

import flax.jax_utils
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from conftest import REPO, run_launch
from convae_jax import (checkpointing, config_checks, models, optimizer, preemption, steps, train,
                        workdir)


def _saved_params(workdir_path, step):
  saved = ocp.StandardCheckpointer().restore(
      os.path.join(workdir_path, 'checkpoints', str(step), 'default'))
  return jax.tree.leaves(saved['params'])


def _photo_args(workdir_path, data_dir, steps, every=5):
  return ['--config', 'configs/photos.py', '--workdir', str(workdir_path),
          f'--config.data_dir={data_dir}', f'--config.num_train_steps={steps}',
          '--config.batch_size=16', f'--config.log_every_steps={every}',
          f'--config.checkpoint_every_steps={every}', '--config.eval_every_steps=100000',
          '--config.profile_num_steps=0', '--config.eval_lpips=False']


def _launch_env(devices=1):
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              JAX_PLATFORMS='cpu')


@pytest.mark.slow
def test_sigterm_saves_and_the_relaunch_ends_where_an_unstopped_run_does(tmp_path,
                                                                          photo_data_dir):
  steps = 400
  reference = run_launch(_photo_args(tmp_path / 'reference', photo_data_dir, steps, every=1000))
  assert reference.returncode == 0, reference.stderr[-2000:]

  stopped = tmp_path / 'stopped'
  process = subprocess.Popen(
      [sys.executable, 'launch.py'] + _photo_args(stopped, photo_data_dir, steps, every=1000) +
      ['--config.log_every_steps=1'], cwd=REPO, env=_launch_env(), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(stopped / 'metrics.jsonl') and os.path.getsize(stopped / 'metrics.jsonl'):
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == preemption.EXIT_CODE, stderr[-2000:]
  assert 'SIGTERM received' in stderr and 'stopped by SIGTERM at step' in stderr
  saved = [int(s) for s in os.listdir(stopped / 'checkpoints')]
  assert len(saved) == 1 and 0 < saved[0] < steps  # Saved where it stopped, not at the end.

  resumed = run_launch(_photo_args(stopped, photo_data_dir, steps, every=1000))
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'at step {saved[0]}' in resumed.stderr
  for a, b in zip(_saved_params(tmp_path / 'reference', steps), _saved_params(stopped, steps)):
    np.testing.assert_array_equal(a, b)


def test_a_second_signal_exits_at_once():
  code = ('import os, signal, time\n'
          'from convae_jax import preemption\n'
          'with preemption.StopRequest() as stop:\n'
          '  os.kill(os.getpid(), signal.SIGINT)\n'
          '  assert stop.requested\n'
          '  os.kill(os.getpid(), signal.SIGINT)\n'
          '  time.sleep(30)\n'
          'print("not reached")\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)
  assert result.returncode == 128 + signal.SIGINT
  assert 'SIGINT again: exiting now' in result.stderr and 'not reached' not in result.stdout


# Orbax's reads still in flight when the restore fails must not print tracebacks.
@pytest.mark.slow
@pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')
def test_unreadable_newest_checkpoint_is_set_aside_and_the_previous_one_used(cifar_config,
                                                                             tmp_path, capfd):
  with tfds.testing.mock_data(num_examples=20):
    straight = train.train_and_evaluate(cifar_config(num_train_steps=6), str(tmp_path / 'a'))
    train.train_and_evaluate(cifar_config(num_train_steps=4), str(tmp_path / 'b'))
    data_dir = tmp_path / 'b' / 'checkpoints' / '4' / 'default'
    for root, _, files in os.walk(data_dir):
      for name in files:
        if os.path.basename(root) == 'd':
          with open(os.path.join(root, name), 'wb') as f:
            f.write(b'truncated')
    resumed = train.train_and_evaluate(cifar_config(num_train_steps=6), str(tmp_path / 'b'))
  assert 'Traceback' not in capfd.readouterr().err
  set_aside = os.listdir(tmp_path / 'b' / 'checkpoints_unreadable')
  assert len(set_aside) == 1 and set_aside[0].startswith('4.')  # Kept, not deleted.
  assert sorted(os.listdir(tmp_path / 'b' / 'checkpoints')) == ['2', '4', '6']
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)


def test_checkpoints_of_another_model_are_refused_and_kept(cifar_config, tmp_path):
  with tfds.testing.mock_data(num_examples=20):
    train.train_and_evaluate(cifar_config(num_train_steps=2), str(tmp_path))
    before = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(tmp_path)
              for p in fs}
    config = cifar_config(num_train_steps=4)
    config.model.backbone.features = (8, 16)
    with pytest.raises(checkpointing.IncompatibleCheckpointError,
                       match=r'checkpoint 2 in .* was written by a different model'):
      train.train_and_evaluate(config, str(tmp_path))
  after = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(tmp_path) for p in fs}
  del before['.lock'], after['.lock']  # Rewritten by each launch; holds only a pid.
  assert after == before
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']


def test_a_busy_workdir_is_refused(tmp_path, cifar_config):
  # flock locks belong to an open file, so a second open in this process is refused as
  # another process would be.
  with workdir.WorkdirLock(str(tmp_path)), tfds.testing.mock_data(num_examples=20):
    with pytest.raises(workdir.WorkdirBusyError, match=r'is in use by another run \(pid \d+\)'):
      train.train_and_evaluate(cifar_config(), str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_non_finite_steps_can_be_skipped(cifar_config):
  config = cifar_config()
  model = models.create_model(config.model)
  config.on_non_finite = 'skip'
  state = steps.create_train_state(model, optimizer.create_optimizer(config), jax.random.key(0),
                                   (32, 32, 3))
  step = steps.make_train_step(config, model, (32, 32, 3), donate=False)
  good = np.full((4, 2, 32, 32, 3), 0.5, np.float32)
  bad = good.copy()
  bad[1, 0, 3, 3, 0] = np.nan
  replicated = flax.jax_utils.replicate(state)
  after_bad, flags = step(replicated, bad, jax.random.key(1))
  flags = flax.jax_utils.unreplicate(flags).compute()
  assert float(flags['non_finite_loss']) == 1.0 and float(flags['first_non_finite_step']) == 1.0
  after_bad = flax.jax_utils.unreplicate(after_bad)
  assert int(after_bad.step) == 1  # The step counts, the update doesn't.
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(after_bad.params)):
    np.testing.assert_array_equal(a, b)
  after_good, _ = step(flax.jax_utils.replicate(after_bad), good, jax.random.key(1))
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(flax.jax_utils.unreplicate(after_good).params)))


@pytest.mark.parametrize('change,message', [
    (lambda c: c.__setitem__('num_train_step', 5), r'config.num_train_step: unknown key; did you mean num_train_steps\?'),
    (lambda c: ml_collections.ConfigDict({**c.to_dict(), 'seed': 1.5}),
     r'config.seed=1.5: must be int'),
    (lambda c: c.__setattr__('checkpoint_every_steps', 0), r'config.checkpoint_every_steps=0: must be a positive integer'),
    (lambda c: c.__setattr__('num_train_steps', -1) or c.__setattr__('num_epochs', 0.0), r'set one of them positive'),
    (lambda c: c.__setattr__('dataset', 'cifar11'), r"config.dataset='cifar11' is not a TFDS dataset; did you mean cifar10"),
    (lambda c: c.__setattr__('on_non_finite', 'ignore'), r"config.on_non_finite='ignore': must be one of stop, skip"),
    (lambda c: c.__setattr__('input_range', (-1.0, 1.0)), r'lies outside what model'),
])
def test_bad_configs_name_the_key(cifar_config, change, message):
  config = cifar_config()
  config = change(config) or config
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check(config, num_devices=4)


@pytest.mark.slow
def test_crash_script_kills_and_resumes(tmp_path, photo_data_dir):
  result = subprocess.run(
      [sys.executable, 'tools/crash_test.py', '--kills', '2', '--seed', '3', '--min_delay', '9',
       '--max_delay', '14', '--workdir', str(tmp_path), '--', '--config', 'configs/photos.py',
       f'--config.data_dir={photo_data_dir}', '--config.num_train_steps=300',
       '--config.batch_size=16', '--config.checkpoint_every_steps=20',
       '--config.eval_every_steps=100000', '--config.profile_num_steps=0'],
      cwd=REPO, env=_launch_env(), capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  report = json.load(open(tmp_path / 'report.json', encoding='utf-8'))
  assert report['final_state_equal'] is True and not report['unreadable_checkpoint_picked']
  assert report['max_steps_lost'] <= 20
