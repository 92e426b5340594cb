"""glibc malloc settings that keep freed activation buffers in the process.

By default glibc hands large freed blocks back to the kernel, so every training step maps
fresh pages for its activations and takes a page fault for each one (about 8,000 a step for
the seed model at batch 128 here, ~2 us each on a VM). These settings keep the memory instead.
They are read when the process starts, so `ensure()` re-executes the current command with
them once, before JAX or TensorFlow is imported. Values already in the environment win;
CONVAE_MALLOC_TUNING=0 turns the re-execution off. See README.md "Performance".
"""
import os
import platform
import sys

SETTINGS = {
    'MALLOC_MMAP_THRESHOLD_': '1000000000000',  # Never mmap a block: reuse the heap instead.
    'MALLOC_TRIM_THRESHOLD_': '1000000000000',  # Never give the heap's top back to the kernel.
    'MALLOC_TOP_PAD_': '536870912',  # Grow the heap in 512 MiB steps (address space, not RSS).
    'MALLOC_ARENA_MAX': '1',  # One arena: freed buffers are found by the next step's threads.
}
OPT_OUT = 'CONVAE_MALLOC_TUNING'


def missing() -> dict[str, str]:
  """The settings this process did not start with (empty where they do not apply)."""
  if os.environ.get(OPT_OUT) == '0' or platform.system() != 'Linux':
    return {}
  if platform.libc_ver()[0] != 'glibc':  # musl and others ignore these variables.
    return {}
  return {k: v for k, v in SETTINGS.items() if k not in os.environ}


def ensure() -> None:
  """Re-executes this very command (same PID) with the settings, unless it has them."""
  todo = missing()
  if not todo or not getattr(sys, 'orig_argv', None):
    return
  env = {**os.environ, **todo, OPT_OUT: '0'}  # OPT_OUT=0 stops a second re-execution.
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
