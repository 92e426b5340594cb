"""Whether JAX will compute on the CPU here, decided before JAX is imported.

The CPU tuning (convae_jax/malloc_env.py, convae_jax/xla_cpu_flags.py) must be set up before
JAX starts, and belongs only where JAX's default backend is the CPU: on a GPU or TPU host
one malloc arena would be shared by tf.data's many threads, for no gain. So this follows how
JAX picks its default backend (jax/_src/xla_bridge.py), from cheap checks:

- JAX_PLATFORM_NAME, else the first entry of JAX_PLATFORMS (a comma list in priority order,
  and JAX fails rather than fall back when that platform does not start): CPU iff it is 'cpu'.
- Neither set: CPU unless an accelerator is there and JAX can drive it, since JAX then picks
  the accelerator and falls back to the CPU only when it does not start:
  - NVIDIA GPU: /dev/nvidia<N> or /dev/dxg (WSL2) exists, CUDA_VISIBLE_DEVICES is not '' or
    '-1', and a CUDA plugin is installed (a `jax_plugins.xla_cuda*` module);
  - AMD GPU: /dev/kfd or /dev/dxg exists, HIP_VISIBLE_DEVICES and ROCR_VISIBLE_DEVICES are not
    '' or '-1', and a ROCm plugin is installed (`jax_plugins.xla_rocm*`);
  - TPU: /dev/accel<N> or /dev/vfio/<N> exists and libtpu is installed (the `libtpu` module,
    or a file at TPU_LIBRARY_PATH).
  A GPU without its JAX plugin is not used by JAX: such a host counts as a CPU host.
"""
import glob
import importlib.util
import os
import pkgutil
from typing import Iterable, Mapping

# Platform: (device paths under the root, variables that hide every device when '' or '-1').
ACCELERATORS = {
    'cuda': (('dev/nvidia[0-9]*', 'dev/dxg'), ('CUDA_VISIBLE_DEVICES',)),
    'rocm': (('dev/kfd', 'dev/dxg'), ('HIP_VISIBLE_DEVICES', 'ROCR_VISIBLE_DEVICES')),
    'tpu': (('dev/accel[0-9]*', 'dev/vfio/[0-9]*'), ()),
}
HIDDEN = ('', '-1')


def installed_platforms(environ: Mapping[str, str] = os.environ) -> set[str]:
  """The accelerator platforms whose JAX plugin is installed, found without importing any."""
  found = set()
  spec = importlib.util.find_spec('jax_plugins')  # A namespace package: nothing runs.
  if spec is not None and spec.submodule_search_locations:
    for module in pkgutil.iter_modules(spec.submodule_search_locations):
      found |= {p for p in ('cuda', 'rocm') if module.name.startswith('xla_' + p)}
  if (importlib.util.find_spec('libtpu') is not None
      or os.path.isfile(environ.get('TPU_LIBRARY_PATH', ''))):
    found.add('tpu')
  return found


def jax_will_use_cpu(environ: Mapping[str, str] = os.environ, root: str = '/',
                     platforms: Iterable[str] | None = None) -> bool:
  """Whether JAX's default backend will be the CPU (the rule: this module's docstring).

  `root` is where /dev is looked for and `platforms` the installed accelerator plugins
  (default: `installed_platforms()`); both are there for tests.
  """
  named = environ.get('JAX_PLATFORM_NAME') or environ.get('JAX_PLATFORMS', '').split(',')[0]
  if named.strip():
    return named.strip().lower() == 'cpu'
  present = {platform for platform, (paths, hiding) in ACCELERATORS.items()
             if any(glob.glob(os.path.join(root, path)) for path in paths)
             and not any(environ.get(name, 'all').strip() in HIDDEN for name in hiding)}
  if not present:
    return True
  platforms = installed_platforms(environ) if platforms is None else set(platforms)
  return not present & platforms
