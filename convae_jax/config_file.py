"""The config file a run names: `--config configs/cifar.py` or `configs/cifar.py:VARIANT`.

A config file is Python whose `get_config(arg=None)` returns an ml_collections ConfigDict;
the text after ':' is passed as `arg` (big_vision's convention). `load` reads one the way
ml_collections' config flag does, but a missing file, a file that raises, or a file with
no `get_config` is a one-line UserError rather than a traceback.
"""
import difflib
import glob
import importlib.util
import os

import ml_collections

from convae_jax import errors


def _not_found(path: str) -> errors.UserError:
  folder = os.path.dirname(path) or '.'
  near = difflib.get_close_matches(os.path.basename(path),
                                   [os.path.basename(p) for p in glob.glob(
                                       os.path.join(folder, '*.py'))], n=1)
  hint = (f'did you mean {os.path.join(os.path.dirname(path), near[0])}? ' if near else '')
  return errors.UserError(f'--config {path}: no such file; {hint}name a config file, e.g. '
                          '--config configs/cifar.py (paths are relative to the current folder)')


def load(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict that `spec` (PATH or PATH:ARG) describes; UserError if it cannot be had."""
  path, colon, arg = spec.partition(':')
  if not path:
    raise errors.UserError('--config is empty; name a config file, e.g. --config configs/cifar.py')
  if not os.path.exists(path):
    raise _not_found(path)
  if not os.path.isfile(path) or not path.endswith('.py'):
    raise errors.UserError(f'--config {path} is not a Python file; name a config file such as '
                           'configs/cifar.py')
  try:
    module_spec = importlib.util.spec_from_file_location('convae_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  # Whatever the file raised.
    raise errors.UserError(f'--config {path} failed to load ({type(e).__name__}: '
                           f'{errors.one_line(e)}); fix the file') from None
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise errors.UserError(f'--config {path} defines no get_config(); a config file returns '
                           'its ConfigDict from get_config(arg=None), as configs/cifar.py does')
  try:
    config = get_config(arg) if colon else get_config()
  except ValueError as e:  # An unknown variant, by convention.
    raise errors.UserError(f'--config {spec}: {errors.one_line(e)}') from None
  except Exception as e:  # pylint: disable=broad-except  # A bug in the file.
    raise errors.UserError(f'--config {spec}: get_config({arg!r}) raised {type(e).__name__}: '
                           f'{errors.one_line(e)}; fix the file') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.UserError(f'--config {spec}: get_config() returned {type(config).__name__}, '
                           'not an ml_collections.ConfigDict')
  return config
