"""Models by name: `config.model.name` picks the class, the rest of `config.model` its fields."""
import dataclasses
from typing import Callable

import ml_collections

_MODELS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
  """Class decorator: makes the model available as `config.model.name = name`."""

  def wrap(cls: type) -> type:
    if name in _MODELS and _MODELS[name] is not cls:
      raise ValueError(f'model name {name!r} is already registered to {_MODELS[name].__name__}')
    _MODELS[name] = cls
    return cls

  return wrap


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
