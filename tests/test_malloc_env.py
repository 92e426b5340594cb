"""launch.py's malloc settings: applied by re-executing once, user values win, opt-out works."""
import json
import os
import platform
import subprocess
import sys

import pytest

from convae_jax import malloc_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ('import json, os; from convae_jax import malloc_env; malloc_env.ensure(); '
         'print(json.dumps({k: os.environ.get(k) for k in malloc_env.SETTINGS}))')


def _probe(**env_updates):
  env = {k: v for k, v in os.environ.items()
         if k not in malloc_env.SETTINGS and k != malloc_env.OPT_OUT}
  env.update(env_updates)
  out = subprocess.run([sys.executable, '-c', PROBE], env=env, cwd=REPO, capture_output=True,
                       text=True, check=True)
  return json.loads(out.stdout)


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
                    reason='the settings are for glibc on Linux')
def test_ensure_reexecutes_with_the_settings_and_keeps_user_values():
  # The probe starts without them: seeing them set means the process re-executed itself.
  assert _probe(MALLOC_ARENA_MAX='4') == {**malloc_env.SETTINGS, 'MALLOC_ARENA_MAX': '4'}


def test_opt_out_leaves_the_environment_alone():
  assert _probe(CONVAE_MALLOC_TUNING='0') == dict.fromkeys(malloc_env.SETTINGS)
