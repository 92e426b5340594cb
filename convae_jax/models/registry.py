"""Registries by name: whole models (`config.model.name`) and the parts the built-in
`autoencoder` combines (`config.model.backbone.name`, `.bottleneck.name`, `.likelihood.name`,
`.corruption.name`). A new part is a new file that registers itself, plus a config.
"""
import dataclasses
import inspect
import os
from typing import Any, Callable, Mapping

import ml_collections


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


# Fields that are not settings: Flax's own, and the device axis the train step sets.
NOT_SETTINGS = ('parent', 'name', 'axis_name')


def settings_of(cls: type) -> list[str]:
  """The settings a registered class takes: its dataclass fields, less NOT_SETTINGS."""
  return sorted(f.name for f in dataclasses.fields(cls) if f.name not in NOT_SETTINGS)


class Registry:
  """Classes by name, for one kind of thing (`what`: 'model', 'model.bottleneck', ...)."""

  def __init__(self, what: str):
    self.what = what
    self._classes: dict[str, type] = {}

  def register(self, name: str) -> Callable[[type], type]:
    """Class decorator: makes the class available as `config.<what>.name = name`."""

    def wrap(cls: type) -> type:
      known = self._classes.get(name)
      if known is not None and not _same_definition(known, cls):
        raise ValueError(f'{self.what} name {name!r} is already registered to {known.__name__}')
      self._classes[name] = cls  # The same file run again (a config file, a notebook): its newest.
      return cls

    return wrap

  def names(self) -> list[str]:
    return sorted(self._classes)

  def get(self, name: str) -> type:
    if name not in self._classes:
      raise ValueError(f'unknown {self.what}.name {name!r}; known: {", ".join(self.names())}')
    return self._classes[name]

  def create(self, config: Mapping[str, Any] | ml_collections.ConfigDict, **context):
    """An instance of the class `config.name` names, with the rest of `config` as settings.

    `context` are fields the caller fills in (e.g. the image channels), not the config.
    """
    if 'name' not in config:
      raise ValueError(f'{self.what} has no name; set {self.what}.name to one of: '
                       f'{", ".join(self.names())}')
    cls = self.get(config['name'])
    kwargs = {k: v for k, v in config.items() if k != 'name'}
    unknown = sorted(set(kwargs) - set(settings_of(cls)))
    if unknown:
      settings = [s for s in settings_of(cls) if s not in context]
      raise ValueError(f'{self.what} {config["name"]!r} has no setting {", ".join(unknown)}; '
                       f'its settings are: {", ".join(settings) or "(none)"}')
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(**kwargs, **context)


MODELS = Registry('model')


def register(name: str) -> Callable[[type], type]:
  """Class decorator for a whole model: `config.model.name = name` (see models.base)."""
  return MODELS.register(name)


def known_models() -> list[str]:
  return MODELS.names()


def get_model_class(name: str) -> type:
  return MODELS.get(name)


def create_model(model_config: ml_collections.ConfigDict, dtype: str = 'float32'):
  """Builds the registered model from `config.model` (its `name` plus the class's fields),
  computing in `dtype` (config.dtype): a model other than float32 has a `dtype` field."""
  cls = get_model_class(model_config.get('name'))  # The clearest refusal of an unknown name.
  if 'dtype' in model_config:
    raise ValueError('model.dtype: the precision is a trainer setting; set --config.dtype')
  if dtype == 'float32':
    return MODELS.create(model_config)
  if 'dtype' not in settings_of(cls):
    raise ValueError(f'model {model_config["name"]!r} computes in float32 only (it has no dtype '
                     f'field), not in {dtype}; set --config.dtype=float32')
  return MODELS.create(model_config, dtype=dtype)
