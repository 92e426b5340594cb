"""convae_jax.host: whether JAX will compute on the CPU, from fake /dev trees and plugins."""
import os
import subprocess
import sys

import pytest

from convae_jax import host

ALL = ('cuda', 'rocm', 'tpu')  # Every plugin installed: only the devices and variables decide.


def _root(tmp_path, *devices):
  """A fake root holding the given /dev entries."""
  for device in devices:
    path = tmp_path / 'dev' / device
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
  return str(tmp_path)


def _cpu(root, platforms=ALL, **environ):
  return host.jax_will_use_cpu(environ, root, platforms)


def test_a_bare_host_is_a_cpu_host(tmp_path):
  assert _cpu(_root(tmp_path))
  assert _cpu(_root(tmp_path, 'nvidiactl', 'vfio/vfio', 'accel/accel0'))  # No device itself.


@pytest.mark.parametrize('device', ['nvidia0', 'nvidia3', 'dxg', 'kfd', 'accel0', 'vfio/0'])
def test_an_accelerator_with_its_plugin_is_not(tmp_path, device):
  assert not _cpu(_root(tmp_path, device))


def test_an_accelerator_without_its_plugin_is_a_cpu_host(tmp_path):
  assert _cpu(_root(tmp_path, 'nvidia0'), platforms=())
  assert _cpu(_root(tmp_path, 'nvidia0', 'accel0'), platforms=('rocm',))
  assert not _cpu(_root(tmp_path, 'nvidia0', 'accel0'), platforms=('tpu',))


def test_hidden_gpus_are_not_used(tmp_path):
  nvidia, amd = _root(tmp_path / 'nvidia', 'nvidia0'), _root(tmp_path / 'amd', 'kfd')
  assert _cpu(nvidia, CUDA_VISIBLE_DEVICES='')
  assert _cpu(nvidia, CUDA_VISIBLE_DEVICES='-1')
  assert not _cpu(nvidia, CUDA_VISIBLE_DEVICES='0')
  assert _cpu(amd, HIP_VISIBLE_DEVICES='-1')
  assert _cpu(amd, ROCR_VISIBLE_DEVICES='')
  assert not _cpu(amd, HIP_VISIBLE_DEVICES='1')


def test_jax_platforms_first_entry_decides(tmp_path):
  gpu, bare = _root(tmp_path / 'gpu', 'nvidia0'), _root(tmp_path / 'bare')
  assert _cpu(gpu, JAX_PLATFORMS='cpu')
  assert _cpu(gpu, JAX_PLATFORMS='cpu,cuda')
  assert not _cpu(gpu, JAX_PLATFORMS='cuda,cpu')
  assert not _cpu(bare, JAX_PLATFORMS='gpu')  # JAX fails rather than fall back to the CPU.
  assert not _cpu(bare, JAX_PLATFORMS='tpu,cpu')
  assert not _cpu(gpu, JAX_PLATFORMS='')  # Empty is unset, as for JAX.
  assert _cpu(gpu, JAX_PLATFORMS='cuda,cpu', JAX_PLATFORM_NAME='cpu')  # It picks the default.


def test_installed_platforms_finds_plugins_without_importing_them(tmp_path, monkeypatch):
  for module in ('jax_plugins/xla_cuda12', 'jax_plugins/xla_rocm7'):
    (tmp_path / module).mkdir(parents=True)
    (tmp_path / module / '__init__.py').write_text('raise ImportError("imported")\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  found = host.installed_platforms({})
  assert {'cuda', 'rocm'} <= found
  assert not any(name.startswith('jax_plugins.') for name in sys.modules)
  library = tmp_path / 'libtpu.so'
  library.touch()
  assert 'tpu' in host.installed_platforms({'TPU_LIBRARY_PATH': str(library)})


def test_deciding_imports_no_jax():
  code = ('import sys; from convae_jax import host; host.jax_will_use_cpu(); '
          'print(sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib")))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env={**os.environ, 'JAX_PLATFORMS': ''})
  assert out.stdout.strip() == '[]'
