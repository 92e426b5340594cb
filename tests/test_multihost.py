"""Two processes on localhost train one run through jax.distributed (CPU collectives: gloo).

Each process has 2 fake CPU devices, so the run spans 4 devices; the reference runs in this
pytest process on 4 devices (conftest.py). Same global batch, so same parameters.
"""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, tiny
from convae_jax import (checkpointing, config_checks, distributed, inference, models, optimizer,
                        steps, train)

STEPS = 4


def _config(data_dir, steps):
  from configs import photos  # pylint: disable=g-import-not-at-top
  # Eval batch 64 over 476 test images: the last global batch holds 28 images, in process
  # 0's 32 rows with 4 of padding, and process 1's rows are all padding.
  return tiny(photos.get_config(), data_dir=data_dir, num_train_steps=steps, batch_size=16,
              eval_batch_size=64, eval_every_steps=STEPS, checkpoint_every_steps=2,
              num_grid_images=4)


def _start_two_processes(workdir, data_dir, steps, *extra_args):
  """Starts launch.py as processes 0 and 1 of one run; returns their Popen objects."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  args = ['--config', 'configs/photos.py', '--workdir', str(workdir),
          f'--config.data_dir={data_dir}', f'--config.num_train_steps={steps}',
          '--config.batch_size=16', '--config.eval_batch_size=64',
          f'--config.eval_every_steps={STEPS}', '--config.checkpoint_every_steps=2',
          '--config.log_every_steps=2', '--config.profile_num_steps=0',
          '--config.num_grid_images=4', f'--coordinator_address=127.0.0.1:{port}',
          '--num_processes=2', *extra_args]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  return [subprocess.Popen([sys.executable, 'launch.py', *args, f'--process_id={i}'], cwd=REPO,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(2)]


def _wait(processes, timeout=240):
  """[(stdout, stderr, returncode)] of each process; kills them all if one hangs."""
  try:
    return [p.communicate(timeout=timeout) + (p.returncode,) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()


def _checkpoint_params(workdir, config, step):
  model = models.create_model(config.model)
  template = steps.create_train_state(model, optimizer.create_optimizer(config),
                                      jax.random.key(0), (32, 32, 3))
  return checkpointing.Checkpointer(str(workdir), 3).restore(template, step).params


def _assert_close(a, b):
  # Same data and arithmetic; only the order of the cross-device sums may differ.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _lines(workdir):
  with open(workdir / 'metrics.jsonl', encoding='utf-8') as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_processes_match_one_and_their_checkpoint_continues_in_one(tmp_path,
                                                                       photo_data_dir):
  one, two = tmp_path / 'one_process', tmp_path / 'two_processes'
  processes = _start_two_processes(two, photo_data_dir, STEPS)
  try:  # The reference trains here meanwhile.
    reference = train.train_and_evaluate(_config(photo_data_dir, STEPS + 2), str(one))
  finally:
    results = _wait(processes)
  for i, (_, stderr, code) in enumerate(results):
    assert code == 0, f'process {i}:\n{stderr[-3000:]}'
  assert 'Training from step 0 to 4' in results[1][1]  # Process 1 trained too.

  # The same parameters as one process after the same global batches.
  config = _config(photo_data_dir, STEPS)
  _assert_close(_checkpoint_params(one, config, STEPS), _checkpoint_params(two, config, STEPS))
  # Evaluation over both processes: the same metrics as one process (each image once).
  eval_one = [l for l in _lines(one) if l['step'] == STEPS and 'eval/mse' in l]
  eval_two = [l for l in _lines(two) if 'eval/mse' in l]
  assert len(eval_two) == 1 and len(eval_one) == 1  # Written once: by process 0 only.
  for key in ('eval/mse', 'eval/psnr', 'eval/ssim'):
    np.testing.assert_allclose(eval_two[0][key], eval_one[0][key], rtol=1e-5)
  assert len([f for f in os.listdir(two) if f.startswith('events.out.tfevents')]) == 1
  assert os.listdir(two / 'images') == [f'reconstructions_{STEPS}.png']
  assert sorted(os.listdir(two / 'checkpoints')) == ['2', '4']

  # The 2-process checkpoint restores in this 1-process run and continues where it stopped.
  continued = train.train_and_evaluate(_config(photo_data_dir, STEPS + 2), str(two))
  assert int(continued.step) == STEPS + 2
  assert sorted(os.listdir(two / 'checkpoints')) == ['2', '4', '6']
  steps = [l['step'] for l in _lines(two) if 'train/loss' in l]
  assert steps == [2, 4, 6]  # Resumed at 4: no step trained twice.
  _assert_close(reference.params, continued.params)


@pytest.mark.slow
def test_two_streaming_processes_read_their_own_shares_and_count_each_eval_image_once(
    tmp_path, photo_data_dir):
  processes = _start_two_processes(tmp_path, photo_data_dir, STEPS,
                                   '--config.input_mode=streaming')
  results = _wait(processes)
  for i, (_, stderr, code) in enumerate(results):
    assert code == 0, f'process {i}:\n{stderr[-3000:]}'
    assert f'Streaming: process {i} of 2 reads its share' in stderr
  # Eval batch 64 over 476 test images: each process's share of 238 ends in a padded batch.
  # The metrics equal an in-memory evaluation of the same weights in this one process.
  logged = [l for l in _lines(tmp_path) if 'eval/mse' in l]
  assert len(logged) == 1 and logged[0]['step'] == STEPS
  expected = inference.load(str(tmp_path)).evaluate(batch_size=64)
  assert expected['num_images'] == 476
  for key in ('mse', 'psnr', 'ssim'):
    np.testing.assert_allclose(logged[0][f'eval/{key}'], expected[key], rtol=1e-5)


def test_cluster_launchers_are_detected_from_their_variables(monkeypatch):
  slurm = dict(SLURM_JOB_ID='7', SLURM_STEP_NODELIST='node[1-2]', SLURM_NTASKS='2',
               SLURM_PROCID='1', SLURM_LOCALID='0')
  for name in [*slurm, 'OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE',
               'JAX_COORDINATOR_ADDRESS']:
    monkeypatch.delenv(name, raising=False)
  assert distributed.launcher() is None
  distributed.initialize()  # Nothing detected, nothing given: stays one process.
  for name, value in slurm.items():
    monkeypatch.setenv(name, value)
  assert distributed.launcher() == 'SLURM'
  monkeypatch.setenv('SLURM_NTASKS', '1')  # One task: nothing to join.
  assert distributed.launcher() is None
  monkeypatch.setenv('OMPI_MCA_orte_hnp_uri', '1531576320.0;tcp://10.0.0.1:34911')
  monkeypatch.setenv('OMPI_COMM_WORLD_SIZE', '4')
  assert distributed.launcher() == 'Open MPI'
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '10.0.0.1:1234')
  assert distributed.launcher() == 'JAX_COORDINATOR_ADDRESS'


def test_global_batch_must_divide_over_the_devices_of_all_processes(cifar_config):
  with pytest.raises(config_checks.ConfigError, match=r'config.batch_size=12 does not divide '
                     r'over 8 devices of 2 processes; use a multiple of 8'):
    config_checks.check(cifar_config(batch_size=12), 8, 2)


def test_unequal_device_counts_are_refused(monkeypatch):
  device = lambda process: type('Device', (), {'process_index': process})()
  monkeypatch.setattr(jax, 'devices', lambda: [device(0), device(0), device(1)])
  with pytest.raises(distributed.ClusterError,
                     match=r'unequal numbers of devices \(process 0: 2, process 1: 1\)'):
    distributed.check_equal_local_devices()
  monkeypatch.setattr(jax, 'devices', lambda: [device(0), device(1)])
  distributed.check_equal_local_devices()
