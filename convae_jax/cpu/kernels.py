"""The CPU kernels by name, and the one seam that puts them in for their plain twins.

A kernel computes the function of one plain Flax module class of convae_jax.models (same
parameters, names and shapes) in a form that XLA:CPU runs faster. `config.kernels` names the
set a run uses: 'auto' (every kernel on a CPU backend, none on a GPU or TPU), 'none', or
names from KERNELS separated by commas. The trainer records the resolved set in the run's
config.json, and evaluation and inference read it back, so they compute as the run did.

The set is put in by `use(kernels)` (`tracing_with` for a function given to jit or pmap):
Flax's method interception around the tracing of a step. A module whose class has a kernel
in the set, with settings that kernel takes (`applies`), is computed by the kernel; every
other module runs its own `__call__`.
"""
import contextlib
import dataclasses
import functools
from typing import Callable, Iterator

import flax.linen as nn
import jax

from convae_jax.cpu import conv_transpose, group_norm, pooled_conv, upsample_conv
from convae_jax.models import layers


@dataclasses.dataclass(frozen=True)
class Kernel:
  module_type: type  # The plain module whose __call__ it replaces (that class exactly).
  applies: Callable[[nn.Module], bool]  # Whether it computes this instance's settings.
  compute: Callable  # (module, inputs) -> outputs, reading the module's parameters.


KERNELS = {
    'pooled_conv': Kernel(layers.PooledConv, pooled_conv.applies, pooled_conv.pooled_conv),
    'conv_transpose': Kernel(nn.ConvTranspose, conv_transpose.applies,
                             conv_transpose.conv_transpose),
    'upsample_conv': Kernel(layers.UpsampleConv, upsample_conv.applies,
                            upsample_conv.upsample_conv),
    'group_norm': Kernel(layers.ActivatedGroupNorm, group_norm.applies, group_norm.group_norm),
}


def parse(text: str) -> tuple[str, ...] | None:
  """config.kernels -> the kernel names it lists ((): 'none'), or None for 'auto'. Raises
  ValueError naming what is wrong."""
  text = text.strip()
  if text == 'auto':
    return None
  if text == 'none':
    return ()
  names = tuple(name.strip() for name in text.split(','))
  unknown = [name for name in names if name not in KERNELS]
  if unknown or not names:
    raise ValueError(f'{unknown[0] if unknown else text!r} is not a CPU kernel; use auto, '
                     f'none, or names from: {", ".join(KERNELS)} (comma-separated)')
  return tuple(dict.fromkeys(names))


def resolve(text: str, backend: str | None = None) -> str:
  """config.kernels with 'auto' made explicit for `backend` ('cpu', 'gpu', 'tpu'; default:
  JAX's): what a run records, so that its evaluation and inference compute as it did
  anywhere."""
  names = parse(text)
  if names is None:
    names = tuple(KERNELS) if (backend or jax.default_backend()) == 'cpu' else ()
  return ','.join(names) or 'none'


def _interceptor(names: tuple[str, ...]):
  table = {KERNELS[name].module_type: KERNELS[name] for name in names}

  def intercept(next_fun, args, kwargs, context):
    kernel = table.get(type(context.module))
    if kernel is None or context.method_name != '__call__' or not kernel.applies(
        context.module):
      return next_fun(*args, **kwargs)
    return kernel.compute(context.module, *args, **kwargs)

  return intercept


@contextlib.contextmanager
def use(kernels: str) -> Iterator[None]:
  """Modules traced inside the block are computed by the CPU kernels `kernels`
  (config.kernels; 'auto' for JAX's backend)."""
  names = parse(resolve(kernels))
  if not names:
    yield
    return
  with nn.intercept_methods(_interceptor(names)):
    yield


def tracing_with(kernels: str, fn: Callable) -> Callable:
  """`fn` tracing the models it runs with the CPU kernels `kernels` (config.kernels): what
  jit or pmap is given."""

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with use(kernels):
      return fn(*args, **kwargs)

  return traced
