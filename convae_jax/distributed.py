"""Several processes, one run: joining a JAX cluster, and what its processes must agree on.

A multi-process run is JAX's own multi-controller model: every process runs the same
program on its local devices after `jax.distributed.initialize()`, and the pmapped
train/eval steps' collectives span all devices of all processes. Nothing else is needed
for data-parallel training; this module only decides when to join a cluster and keeps the
few host-side decisions that one process makes alone (the workdir lock, a stop signal,
an unreadable checkpoint) the same on every process, so that none is left waiting in a
collective the others never reach. With one process every function here is a no-op.
"""
import collections
import contextlib
import os
from typing import Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from convae_jax import errors

T = TypeVar('T')


class ClusterError(errors.UserError):
  """jax.distributed.initialize() failed: missing or wrong coordinator, count or id."""


def launcher() -> str | None:
  """The multi-process launcher that started this process, if JAX detects it from variables.

  The same variables JAX's cluster detection reads (jax/_src/clusters in jax 0.10.2):
  SLURM's srun with several tasks, Open MPI's mpirun with several ranks, or an explicit
  JAX_COORDINATOR_ADDRESS. Cloud TPU pod slices and Kubernetes are detected by JAX through
  metadata servers and APIs, not variables: pass --distributed for those.
  """
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  slurm = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
           'SLURM_LOCALID')
  if all(name in env for name in slurm) and int(env['SLURM_NTASKS']) > 1:
    return 'SLURM'
  if 'OMPI_MCA_orte_hnp_uri' in env and int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'Open MPI'
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, force: bool | None = None) -> None:
  """Joins a JAX cluster when this run is multi-process; otherwise does nothing.

  `force` True always calls jax.distributed.initialize() (JAX detects what the arguments
  leave unset), False never; None calls it when any argument is given or `launcher()`
  finds one. Must run before anything touches a JAX backend.
  """
  given = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if force is False or not (force or given or launcher()):
    return
  # JAX's preemption service would catch SIGTERM for the whole process life (a SIGTERM
  # before training starts would be swallowed); the trainer handles SIGTERM/SIGINT itself
  # (preemption.py) and all processes agree on the step to stop at (loop.stop_agreed).
  jax.config.update('jax_enable_preemption_service', False)
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  except (ValueError, TypeError, RuntimeError) as e:
    raise ClusterError(
        f'jax.distributed.initialize(coordinator_address={coordinator_address!r}, '
        f'num_processes={num_processes!r}, process_id={process_id!r}) failed: '
        f'{" ".join(str(e).split())[:500]}; pass --coordinator_address=HOST:PORT '
        '--num_processes=N --process_id=I, or launch under SLURM/Open MPI') from None


def check_equal_local_devices() -> None:
  """Raises ClusterError unless every process has as many devices as the others.

  Each process feeds an equal slice of each global batch to its devices, so the trainer
  needs equal counts. Every process sees the same global device list: all raise together.
  """
  counts = collections.Counter(device.process_index for device in jax.devices())
  if len(set(counts.values())) > 1:
    listed = ', '.join(f'process {p}: {n}' for p, n in sorted(counts.items()))
    raise ClusterError(f'processes have unequal numbers of devices ({listed}); give every '
                       'process the same number (e.g. the same CUDA_VISIBLE_DEVICES count)')


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is True on any of them (a collective: all must call)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


@contextlib.contextmanager
def same_outcome(*errors: type[Exception]):
  """Runs the block on every process; if it raised on any process, it raises on all.

  For work that may fail on some processes only (process 0 takes the workdir lock, a disk
  read fails on one host). The process that failed re-raises its own error; the others
  raise the first of `errors` that any process raised (with the failing process named),
  or RuntimeError for anything else, so the run stops everywhere with the same exit code
  instead of leaving processes waiting in a collective. All processes must enter.
  """
  error = None
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  # Shared, then re-raised below.
    error = e
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return
  code = 0 if error is None else next(
      (i + 1 for i, cls in enumerate(errors) if isinstance(error, cls)), len(errors) + 1)
  codes = multihost_utils.process_allgather(np.int32(code))
  if error is not None:
    raise error
  failed = np.flatnonzero(codes)
  if failed.size:
    first = int(failed[0])
    cls = errors[codes[first] - 1] if codes[first] <= len(errors) else RuntimeError
    raise cls(f'process {first} of {jax.process_count()} stopped the run (see its log): '
              f'{cls.__name__}')


def process_0_first(fn: Callable[[], T], *errors: type[Exception]) -> T:
  """fn() on process 0, then on the others: e.g. preparing a dataset in a shared directory.

  Errors are shared as in `same_outcome`.
  """
  result = None
  with same_outcome(*errors):
    if jax.process_index() == 0:
      result = fn()
  with same_outcome(*errors):
    if jax.process_index() != 0:
      result = fn()
  return result


def barrier(name: str) -> None:
  """Waits until every process gets here."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
