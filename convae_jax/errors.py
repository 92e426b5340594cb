"""Mistakes a user can make and fix: one line each, exit code 2, no traceback.

launch.py, the CLI and the CIFAR-10 import catch `UserError` alone: its message names what
is wrong and the fix, printed as `error: ...`. Anything else that escapes is a bug, and
keeps its traceback.
"""
import argparse
import sys

EXIT_CODE = 2  # Refused: nothing was started, and nothing saved before was changed.


class UserError(Exception):
  """A bad flag, config, path, dataset, split, workdir or input; the message says the fix."""


def one_line(error: BaseException) -> str:
  """The error's message with its whitespace folded, for an `error: ...` line."""
  return ' '.join(str(error).split())


def report(error: BaseException) -> int:
  """Prints `error: MESSAGE` on stderr; returns EXIT_CODE."""
  print(f'error: {one_line(error)}', file=sys.stderr, flush=True)
  return EXIT_CODE


def refuse(error: BaseException) -> None:
  """Prints `error: MESSAGE` and exits with EXIT_CODE."""
  sys.exit(report(error))


class ArgumentParser(argparse.ArgumentParser):
  """argparse, but a bad command line is one line `error: ...` and exit code 2."""

  def error(self, message):
    refuse(UserError(f'{message} (see {self.prog} --help)'))
