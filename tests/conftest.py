"""Shared test setup: 4 fake CPU devices (set before JAX starts), tiny configs, offline data."""
import contextlib
import io
import os
import subprocess
import sys

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Compile with few optimizations, as Flax's example tests do: the tests' tiny steps are
# dominated by compile time. Fresh processes (launch.py) inherit it.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(config, **overrides):
  """A config shrunk to a few steps of small batches, with `overrides` applied."""
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.num_grid_images = 4
  config.profile_num_steps = 0
  # LPIPS's AlexNet runs slowly compiled without optimizations; the tests of eval/lpips turn
  # it back on.
  config.eval_lpips = False
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.fixture
def cifar_config():
  from configs import cifar  # pylint: disable=g-import-not-at-top
  return lambda **overrides: tiny(cifar.get_config(), **overrides)


@pytest.fixture(scope='session')
def photo_data_dir(tmp_path_factory):
  """The embedded photo_patches dataset, prepared once per session (real images, no network)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import convae_jax.datasets  # pylint: disable=g-import-not-at-top,unused-import
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('photo_patches', data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture(scope='session')
def cae_workdir(tmp_path_factory, photo_data_dir):
  """A cae trained for two steps on photo_patches by the real trainer."""
  from configs import photos  # pylint: disable=g-import-not-at-top
  from convae_jax import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('cae'))
  config = tiny(photos.get_config('cae'), data_dir=photo_data_dir, num_train_steps=2,
                eval_batch_size=128, eval_lpips=True)
  train.train_and_evaluate(config, workdir)
  return workdir


def run_cli(*argv):
  """(exit code, stdout, stderr) of `python -m convae_jax.cli ARGV`, run in this process."""
  from convae_jax import cli  # pylint: disable=g-import-not-at-top
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = cli.main([str(a) for a in argv])
    except SystemExit as e:
      code = e.code
  return code, out.getvalue(), err.getvalue()


def run_launch(args, *, devices: int = 1, timeout: int = 300, optimized: bool = False):
  """Runs launch.py in a fresh process with `devices` fake CPU devices (compiled with XLA's
  optimizations if `optimized`: steps with LPIPS's AlexNet and a discriminator run slowly
  enough without them to outweigh the longer compile)."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  if optimized:
    env.pop('JAX_DISABLE_MOST_OPTIMIZATIONS', None)
  return subprocess.run([sys.executable, os.path.join(REPO, 'launch.py')] + list(args),
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                        check=False)


def train_through_launch(config_file, workdir, data_dir, *overrides, optimized=False):
  """Trains `config_file` for 8 steps through launch.py (`optimized`: as run_launch); returns
  (train lines, final eval) of its metrics.jsonl, after checking that it succeeded and saved
  step 8 alone."""
  import json  # pylint: disable=g-import-not-at-top
  result = run_launch([
      '--config', config_file, '--workdir', str(workdir), f'--config.data_dir={data_dir}',
      '--config.num_train_steps=8', '--config.batch_size=32', '--config.log_every_steps=4',
      '--config.eval_every_steps=8', '--config.checkpoint_every_steps=8',
      '--config.profile_num_steps=0', *overrides], optimized=optimized)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    lines = [json.loads(line) for line in f]
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['8']
  final_eval = [l for l in lines if 'eval/mse' in l][-1]
  assert final_eval['step'] == 8
  return [l for l in lines if 'train/loss' in l], final_eval
