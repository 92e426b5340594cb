"""Graceful stops: on SIGTERM or SIGINT the trainer finishes its step, saves, and exits.

A second signal ends the process at once (exit code 128 + the signal's number).
"""
import os
import signal
import sys
import threading

# Exit code of a run stopped by a signal after saving: EX_TEMPFAIL, "try again later", so
# schedulers and wrapper scripts can tell "relaunch me" from a failure.
EXIT_CODE = 75


class Preempted(Exception):
  """Raised by the trainer after it saved a checkpoint because a stop was requested."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f'stopped by {signal_name} at step {step} after saving a checkpoint; '
                     'launch again with the same --workdir to resume')
    self.step = step


class StopRequest:
  """Context manager: while active, SIGTERM/SIGINT set `requested` instead of killing."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested:
      print(f'{name} again: exiting now without saving', file=sys.stderr, flush=True)
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.signal_name = name
    print(f'{name} received: finishing this step, saving a checkpoint, then exiting '
          f'(send it again to exit at once)', file=sys.stderr, flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # Only it may set handlers.
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False
