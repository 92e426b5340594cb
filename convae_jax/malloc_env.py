"""glibc malloc settings that keep freed activation buffers in the process (on by default).

By default glibc hands large freed blocks back to the kernel, so every training step maps
fresh pages for its activations and takes a page fault for each one, which is costly on a
VM. These settings keep the memory instead (what that buys: docs/performance.md). They are
read when the process
starts, so `ensure()` re-executes the current command with them once, before JAX or
TensorFlow is imported. Values already in the environment win.

Only where JAX will compute on the CPU (`host.jax_will_use_cpu()`): a GPU or TPU host is
never re-executed, as tf.data's many threads would share the one arena there. On unless
CONVAE_MALLOC_TUNING=0. They change where buffers live, never what is computed:
the train step gives bitwise the same state with or without them and whatever the alignment
of the host arrays it starts from (tests/test_malloc_env.py), and a resumed run ends bitwise
equal to an unstopped one with them on (docs/never_losing_work.md).
"""
import os
import platform
import sys

from convae_jax import host

SETTINGS = {
    'MALLOC_MMAP_THRESHOLD_': '1000000000000',  # Never mmap a block: reuse the heap instead.
    'MALLOC_TRIM_THRESHOLD_': '1000000000000',  # Never give the heap's top back to the kernel.
    'MALLOC_TOP_PAD_': '536870912',  # Grow the heap in 512 MiB steps (address space, not RSS).
    'MALLOC_ARENA_MAX': '1',  # One arena: freed buffers are found by the next step's threads.
}
SWITCH = 'CONVAE_MALLOC_TUNING'  # '1' on, '0' off; unset: the caller's default.


def applies() -> bool:
  """Whether the settings mean anything here: glibc on Linux (musl, macOS and Windows ignore
  these variables)."""
  return platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


def missing() -> dict[str, str]:
  """The settings this process did not start with (empty where they do not apply)."""
  if not applies():
    return {}
  return {k: v for k, v in SETTINGS.items() if k not in os.environ}


def ensure(default_on: bool = True) -> None:
  """Re-executes this very command (same PID) with the settings, when they are switched on
  (CONVAE_MALLOC_TUNING=1, or unset and `default_on`), JAX will compute on the CPU and the
  process lacks them."""
  switch = os.environ.get(SWITCH)
  if not (switch == '1' or (switch is None and default_on)) or not host.jax_will_use_cpu():
    return  # Off, or a GPU or TPU host.
  todo = missing()
  if not todo or not getattr(sys, 'orig_argv', None):
    return  # Once re-executed, nothing is missing: no second re-execution.
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, **todo})


def describe() -> str:
  """The settings this process runs with, for the log."""
  if not applies():
    return 'not applicable (not glibc)'
  present = [f'{k}={os.environ[k]}' for k in SETTINGS if k in os.environ]
  if not present and not host.jax_will_use_cpu():
    return 'off (JAX computes on an accelerator here)'
  if not present:
    return f'off ({SWITCH}=0 or none set)'
  return ' '.join(present) + f' ({SWITCH}=0 turns them off)'
