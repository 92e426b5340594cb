"""A run's workdir: one run at a time, and the resolved config written beside its checkpoints."""
import fcntl
import os

import ml_collections
from absl import logging

from convae_jax import errors


class WorkdirBusyError(errors.UserError):
  """Another live process is training in this workdir."""


class WorkdirLock:
  """An exclusive lock on WORKDIR/.lock, released when the process ends, even by kill -9.

  A multi-process run takes it in process 0 only: the run's other processes share the
  workdir and must not be refused. On a shared filesystem it also refuses a second run
  started from another host where flock works across hosts (Linux NFS clients map it to
  NFS locks unless mounted with local_lock; Lustre needs its `flock` mount option). Where
  flock is not supported at all (some FUSE mounts), the run goes on without the lock and
  says so.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, '.lock')
    self._file = None

  def __enter__(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._file = open(self.path, 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      owner = self._file.read().strip() or 'unknown'
      self._file.close()
      raise WorkdirBusyError(
          f'{os.path.dirname(self.path)} is in use by another run (pid {owner}); wait for it '
          'to finish or choose another --workdir') from None
    except OSError as e:  # ENOLCK, EOPNOTSUPP, ...: the filesystem cannot lock.
      logging.warning('Cannot lock %s (%s); training without the one-run-per-workdir guard',
                      self.path, e)
      self._file.close()
      self._file = None
      return self
    self._file.truncate(0)
    self._file.write(str(os.getpid()))
    self._file.flush()
    return self

  def __exit__(self, *exc):
    if self._file is None:
      return False
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    return False


def save_config(config: ml_collections.ConfigDict, workdir: str, start_step: int) -> None:
  """Writes the resolved config; a relaunch with other settings adds a file, never overwrites."""
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      if f.read() == text:
        return
    path = os.path.join(workdir, f'config.resumed_at_step_{start_step}.json')
    logging.warning('Config differs from the saved one; saving it as %s', path)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)
