"""Checks of the folders a user names (workdir, data_dir, output), before anything is written."""
import os

from convae_jax import errors


def check_dir(path: str, what: str, writable: bool = True) -> str:
  """`path` as an absolute path, if it is a folder or can be made one; else UserError.

  `what` names the setting in the message, e.g. '--workdir' or 'config.data_dir'. With
  `writable` False an existing folder may be read-only (a shared, prepared data_dir).
  """
  if not path or not str(path).strip():
    raise errors.UserError(f'{what} is empty; name a folder')
  absolute = os.path.abspath(os.path.expanduser(str(path)))
  if os.path.exists(absolute) and not os.path.isdir(absolute):
    raise errors.UserError(f'{what} {path} is a file, not a folder; name a folder (new or '
                           'existing)')
  existing = absolute
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise errors.UserError(f'{what} {path}: {existing} is a file, so no folder can be made '
                           'below it; name another folder')
  if (writable or existing != absolute) and not os.access(existing, os.W_OK | os.X_OK):
    raise errors.UserError(f'{what} {path}: {existing} is not writable by this user; name a '
                           'folder you can write to')
  return absolute
