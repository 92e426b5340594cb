"""launch.py end to end, in fresh processes, on the embedded photo_patches dataset."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import run_launch
from convae_jax import checkpointing, malloc_env, models, optimizer, steps, xla_cpu_flags


def _args(workdir, data_dir, steps):
  return ['--config', 'configs/photos.py', '--workdir', str(workdir),
          f'--config.data_dir={data_dir}', f'--config.num_train_steps={steps}',
          '--config.batch_size=16', '--config.eval_batch_size=64', '--config.log_every_steps=2',
          '--config.eval_every_steps=3', '--config.checkpoint_every_steps=3',
          '--config.profile_num_steps=0', '--config.num_grid_images=8',
          '--config.eval_lpips=False']


def _final_params(workdir, config):
  model = models.create_model(config.model)
  template = steps.create_train_state(model, optimizer.create_optimizer(config),
                                      jax.random.key(0), (32, 32, 3))
  return checkpointing.Checkpointer(str(workdir), 3).restore(template).params


@pytest.mark.slow
def test_launch_trains_resumes_and_matches_four_devices(tmp_path, photo_data_dir):
  one, four = tmp_path / 'one_device', tmp_path / 'four_devices'
  result = run_launch(_args(one, photo_data_dir, 6), devices=1)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(one / 'checkpoints')) == ['3', '6']
  lines = [json.loads(l) for l in open(one / 'metrics.jsonl', encoding='utf-8')]
  evals = [l for l in lines if 'eval/psnr' in l]
  assert [l['step'] for l in evals] == [3, 6]
  assert all(np.isfinite(l[k]) for l in evals for k in ('eval/mse', 'eval/psnr', 'eval/ssim'))
  assert os.path.getsize(one / 'images' / 'reconstructions_6.png') > 0
  saved_config = json.load(open(one / 'config.json', encoding='utf-8'))
  assert saved_config['dataset'] == 'photo_patches' and saved_config['num_train_steps'] == 6
  # launch.py adds its XLA:CPU flags on AVX-512 CPUs, after the ones it was started with.
  flags_line = next(line for line in result.stderr.splitlines() if 'XLA_FLAGS:' in line)
  assert '--xla_force_host_platform_device_count=1' in flags_line
  assert ('--xla_cpu_prefer_vector_width=512' in flags_line) == xla_cpu_flags.cpu_has_avx512()
  # And it runs with the malloc settings unless told not to (CONVAE_MALLOC_TUNING=0).
  malloc_line = next(line for line in result.stderr.splitlines() if 'malloc settings:' in line)
  if malloc_env.applies() and os.environ.get(malloc_env.SWITCH) != '0':
    assert all(f'{k}=' in malloc_line for k in malloc_env.SETTINGS), malloc_line
  # The run ends with one line that says it is done, with its final figures and outputs.
  last = result.stderr.strip().splitlines()[-1]
  assert 'Done: trained to step 6 of 6' in last and 'eval/psnr=' in last and str(one) in last
  assert 'Traceback' not in result.stderr and 'libtpu' not in result.stderr

  # The same global batch over 4 devices reaches the same parameters.
  result = run_launch(_args(four, photo_data_dir, 6), devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  from configs import photos  # pylint: disable=g-import-not-at-top
  config = photos.get_config()
  for a, b in zip(jax.tree.leaves(_final_params(one, config)),
                  jax.tree.leaves(_final_params(four, config))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  # Launching again resumes: longer runs continue from step 6, not from scratch.
  result = run_launch(_args(one, photo_data_dir, 9), devices=1)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resumed from' in result.stderr and 'at step 6' in result.stderr
  assert sorted(os.listdir(one / 'checkpoints')) == ['3', '6', '9']
  steps = [json.loads(l)['step'] for l in open(one / 'metrics.jsonl', encoding='utf-8')]
  assert steps == sorted(steps)  # No step was trained twice.
