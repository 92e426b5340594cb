"""The malloc settings: on by default, off with CONVAE_MALLOC_TUNING=0, user values win, and
the train step computes bitwise the same with or without them."""
import json
import os
import subprocess
import sys

import pytest

from convae_jax import malloc_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = malloc_env.applies()


def _probe(default_on: bool, root: str | None = None, **env_updates):
  """The settings a fresh process has after `ensure(default_on)`; a CPU host, unless `root`
  names a fake root whose /dev JAX would use (every accelerator plugin counts as installed)."""
  fake = (f'host.jax_will_use_cpu = functools.partial(host.jax_will_use_cpu, root={root!r}, '
          'platforms=("cuda", "rocm", "tpu")); ' if root else '')
  code = ('import functools, json, os; from convae_jax import host, malloc_env; ' + fake +
          f'malloc_env.ensure(default_on={default_on}); '
          'print(json.dumps({k: os.environ.get(k) for k in malloc_env.SETTINGS}))')
  env = {k: v for k, v in os.environ.items()
         if k not in malloc_env.SETTINGS and k != malloc_env.SWITCH}
  env['JAX_PLATFORMS'] = 'cpu'
  env.update(env_updates)
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO, capture_output=True,
                       text=True, check=True)
  return json.loads(out.stdout)


NONE = dict.fromkeys(malloc_env.SETTINGS)


@pytest.mark.skipif(not GLIBC, reason='the settings are for glibc on Linux')
def test_switched_on_the_process_reexecutes_with_them_and_user_values_win():
  # The probe starts without them: seeing them set means the process re-executed itself.
  assert _probe(False, CONVAE_MALLOC_TUNING='1', MALLOC_ARENA_MAX='4') == {
      **malloc_env.SETTINGS, 'MALLOC_ARENA_MAX': '4'}
  assert _probe(True) == malloc_env.SETTINGS


def test_on_by_default_and_off_when_switched_off():
  assert _probe(True, CONVAE_MALLOC_TUNING='0') == NONE
  assert _probe(False) == NONE  # A caller may still default to off.
  if GLIBC:
    assert _probe(True) == malloc_env.SETTINGS


@pytest.mark.skipif(not GLIBC, reason='the settings are for glibc on Linux')
@pytest.mark.parametrize('device', ['nvidia0', 'kfd', 'accel0'])
def test_only_where_jax_computes_on_the_cpu(tmp_path, device):
  (tmp_path / 'dev').mkdir()
  (tmp_path / 'dev' / device).touch()
  accelerator, bare = str(tmp_path), str(tmp_path / 'bare')
  # An accelerator JAX would use: no re-execution, even when switched on.
  assert _probe(True, accelerator, JAX_PLATFORMS='') == NONE
  assert _probe(True, accelerator, JAX_PLATFORMS='', CONVAE_MALLOC_TUNING='1') == NONE
  # Told to compute on the CPU, or on a host without accelerators: re-executed.
  assert _probe(True, accelerator, JAX_PLATFORMS='cpu') == malloc_env.SETTINGS
  assert _probe(True, bare, JAX_PLATFORMS='') == malloc_env.SETTINGS


# Three train steps of the seed as launch.py compiles them (all optimizations, its XLA flags,
# automatic micro-batches), from host arrays whose data starts `offset` bytes past a 64-byte
# boundary; prints a digest of the whole final state.
_STEPS_DIGEST = """
import hashlib, sys
from convae_jax import xla_cpu_flags
xla_cpu_flags.apply()
import flax.jax_utils, jax, numpy as np
from configs import cifar
from convae_jax import models, optimizer, steps
config = cifar.get_config()
config.batch_size = 32
model = models.create_model(config.model)
config.micro_batches = steps.micro_batches(config, model, 1, jax.default_backend(), (32, 32, 3))
host = jax.device_get(steps.create_train_state(
    model, optimizer.create_optimizer(config), jax.random.key(0), (32, 32, 3)))
offset = int(sys.argv[1])
def placed(x):
  x = np.asarray(x)
  buffer = np.empty(x.nbytes + 128, np.uint8)
  start = (-buffer.ctypes.data) % 64 + offset
  y = buffer[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
  y[...] = x
  return y
state = flax.jax_utils.replicate(jax.tree.map(placed, host), jax.local_devices()[:1])
step = steps.make_train_step(config, model, (32, 32, 3))
images = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 32, 3), dtype=np.uint8)
for i in range(3):
  state, _ = step(state, images, jax.random.key(i))
leaves = jax.tree.leaves(jax.device_get(state))
print(hashlib.sha256(b''.join(np.asarray(x).tobytes() for x in leaves)).hexdigest())
"""


def _steps_digest(malloc_settings: bool, offset: int) -> str:
  dropped = (*malloc_env.SETTINGS, 'XLA_FLAGS', 'JAX_DISABLE_MOST_OPTIMIZATIONS')
  env = {k: v for k, v in os.environ.items() if k not in dropped}
  env[malloc_env.SWITCH] = '0'
  if malloc_settings:
    env.update(malloc_env.SETTINGS)
  out = subprocess.run([sys.executable, '-c', _STEPS_DIGEST, str(offset)], env=env, cwd=REPO,
                       capture_output=True, text=True, check=True)
  return out.stdout.split()[-1]


@pytest.mark.slow
def test_train_step_is_bitwise_the_same_with_the_settings_and_any_alignment():
  # Why they can be on by default: they move buffers, and nothing computed depends on where.
  reference = _steps_digest(malloc_settings=False, offset=0)
  assert _steps_digest(malloc_settings=True, offset=0) == reference
  assert _steps_digest(malloc_settings=True, offset=4) == reference
