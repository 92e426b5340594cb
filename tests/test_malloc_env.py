"""The malloc settings: opt-in for launch.py, on by default for benchmarks, user values win."""
import json
import os
import platform
import subprocess
import sys

import pytest

from convae_jax import malloc_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


def _probe(default_on: bool, **env_updates):
  """The settings a fresh process has after `ensure(default_on)`."""
  code = ('import json, os; from convae_jax import malloc_env; '
          f'malloc_env.ensure(default_on={default_on}); '
          'print(json.dumps({k: os.environ.get(k) for k in malloc_env.SETTINGS}))')
  env = {k: v for k, v in os.environ.items()
         if k not in malloc_env.SETTINGS and k != malloc_env.SWITCH}
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


def test_off_by_default_for_training_and_when_switched_off():
  assert _probe(False) == NONE
  assert _probe(True, CONVAE_MALLOC_TUNING='0') == NONE
