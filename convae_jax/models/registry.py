"""Models by name: `config.model.name` picks the class, the rest of `config.model` its fields."""
import dataclasses
import inspect
import os
from typing import Callable

import ml_collections

_MODELS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
  """Class decorator: makes the model available as `config.model.name = name`."""

  def wrap(cls: type) -> type:
    if name in _MODELS and not _same_definition(_MODELS[name], cls):
      raise ValueError(f'model name {name!r} is already registered to {_MODELS[name].__name__}')
    _MODELS[name] = cls  # The same file run again (a config file, a notebook cell): its newest.
    return cls

  return wrap


def _source_file(cls: type) -> str | None:
  """The file that defines `cls`'s methods (found through flax's method wrappers)."""
  for value in vars(cls).values():
    code = getattr(inspect.unwrap(value), '__code__', None) if callable(value) else None
    if code is not None and not code.co_filename.startswith('<'):
      return os.path.realpath(code.co_filename)
  return None


def _same_definition(a: type, b: type) -> bool:
  """Whether two classes are one definition, executed twice (same name, same source file)."""
  return a is b or (a.__qualname__ == b.__qualname__ and _source_file(a) is not None and
                    _source_file(a) == _source_file(b))


def known_models() -> list[str]:
  return sorted(_MODELS)


def get_model_class(name: str) -> type:
  if name not in _MODELS:
    raise ValueError(f'unknown model.name {name!r}; known models: {", ".join(known_models())}')
  return _MODELS[name]


def create_model(model_config: ml_collections.ConfigDict):
  """Builds the registered model from `config.model` (its `name` plus the class's fields)."""
  cls = get_model_class(model_config.name)
  kwargs = {k: v for k, v in model_config.items() if k != 'name'}
  fields = {f.name for f in dataclasses.fields(cls) if f.name not in ('parent', 'name')}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f'model {model_config.name!r} has no setting {", ".join(unknown)}; '
                     f'its settings are: {", ".join(sorted(fields))}')
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return cls(**kwargs)
