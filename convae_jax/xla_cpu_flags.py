"""XLA:CPU code-generation flags that speed up training on CPUs with AVX-512 (on by default).

XLA:CPU asks LLVM for 256-bit vectors even where the CPU has 512-bit ones; the seed's fused
elementwise work (the tap-sum first conv with its max pooling, the pooling gradients) runs
faster with 512-bit vectors (docs/performance.md). XLA reads XLA_FLAGS when the first JAX
backend starts, so `apply()` must run before any JAX computation. A flag already in XLA_FLAGS wins (put
`--xla_cpu_prefer_vector_width=256` there to turn this off). Only where JAX will compute on
the CPU (`host.jax_will_use_cpu()`): a GPU or TPU host gets no CPU flags.
"""
import os

from convae_jax import host

FLAGS = {'xla_cpu_prefer_vector_width': '512'}
CPUINFO = '/proc/cpuinfo'


def cpu_has_avx512(cpuinfo: str = CPUINFO) -> bool:
  """Whether the CPU advertises AVX-512F (Linux; False where /proc/cpuinfo is missing)."""
  try:
    with open(cpuinfo, encoding='utf-8') as f:
      return any(line.startswith('flags') and 'avx512f' in line.split() for line in f)
  except OSError:
    return False


def flag_strings() -> list[str]:
  """FLAGS as XLA_FLAGS entries, `--name=value`."""
  return [f'--{name}={value}' for name, value in FLAGS.items()]


def apply(environ=None, cpuinfo: str = CPUINFO) -> list[str]:
  """Appends the FLAGS that XLA_FLAGS lacks, on AVX-512 CPUs that JAX will compute on;
  returns the flags added."""
  environ = os.environ if environ is None else environ
  if not cpu_has_avx512(cpuinfo) or not host.jax_will_use_cpu(environ):
    return []
  current = environ.get('XLA_FLAGS', '')
  given = {flag.lstrip('-').split('=')[0] for flag in current.split()}
  added = [flag for name, flag in zip(FLAGS, flag_strings()) if name not in given]
  if added:
    environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  return added
