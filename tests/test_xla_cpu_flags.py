"""convae_jax.xla_cpu_flags: which XLA:CPU flags are added to XLA_FLAGS, and when."""
import functools
import subprocess
import sys

import pytest

from convae_jax import host, xla_cpu_flags

AVX512 = 'processor : 0\nflags : fpu sse avx2 avx512f avx512bw\n'
AVX2 = 'processor : 0\nflags : fpu sse avx2 fma\n'


def _cpuinfo(tmp_path, text):
  path = tmp_path / 'cpuinfo'
  path.write_text(text)
  return str(path)


def _fake_host(monkeypatch, root, *devices):
  """Makes `host` see `root` as the root, holding `devices` under /dev, every plugin installed."""
  (root / 'dev').mkdir(parents=True)
  for device in devices:
    (root / 'dev' / device).touch()
  monkeypatch.setattr(host, 'jax_will_use_cpu', functools.partial(
      host.jax_will_use_cpu, root=str(root), platforms=('cuda', 'rocm', 'tpu')))


@pytest.fixture(autouse=True)
def cpu_host(tmp_path, monkeypatch):
  _fake_host(monkeypatch, tmp_path / 'cpu_host')


def test_adds_the_flags_after_the_users_own(tmp_path):
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  added = xla_cpu_flags.apply(environ, _cpuinfo(tmp_path, AVX512))
  assert added == ['--xla_cpu_prefer_vector_width=512']
  assert environ['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=4 '
                                  '--xla_cpu_prefer_vector_width=512')
  assert xla_cpu_flags.apply(environ, _cpuinfo(tmp_path, AVX512)) == []  # Idempotent.


def test_a_value_already_set_wins(tmp_path):
  environ = {'XLA_FLAGS': '--xla_cpu_prefer_vector_width=256'}
  assert xla_cpu_flags.apply(environ, _cpuinfo(tmp_path, AVX512)) == []
  assert environ == {'XLA_FLAGS': '--xla_cpu_prefer_vector_width=256'}


def test_nothing_without_avx512_or_cpuinfo(tmp_path):
  environ = {}
  assert xla_cpu_flags.apply(environ, _cpuinfo(tmp_path, AVX2)) == []
  assert xla_cpu_flags.apply(environ, str(tmp_path / 'missing')) == []
  assert environ == {}


def test_no_flags_where_jax_computes_on_an_accelerator(tmp_path, monkeypatch):
  _fake_host(monkeypatch, tmp_path / 'gpu_host', 'nvidia0')
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  assert xla_cpu_flags.apply(environ, _cpuinfo(tmp_path, AVX512)) == []
  assert environ == {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  # Told to compute on the CPU, the same host gets them.
  environ = {'JAX_PLATFORMS': 'cpu'}
  assert xla_cpu_flags.apply(environ, _cpuinfo(tmp_path, AVX512)) == [
      '--xla_cpu_prefer_vector_width=512']
  assert environ['XLA_FLAGS'] == '--xla_cpu_prefer_vector_width=512'


def test_jax_accepts_the_flags():
  """XLA aborts the process on a flag it does not know: the added ones must parse."""
  flags = ' '.join(xla_cpu_flags.flag_strings())
  code = ('import os; os.environ["XLA_FLAGS"] = ' + repr(flags) + '; import jax; '
          'print(float(jax.jit(lambda x: (x * 2).sum())(jax.numpy.ones(64))))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip().splitlines()[-1] == '128.0'
