"""Checks of a config made before anything loads or compiles: one clear line per problem."""
import difflib
import math

import ml_collections

from convae_jax import errors, losses, models, optimizer, paths, trainer_config
from convae_jax.cpu import kernels as cpu_kernels



class ConfigError(errors.UserError, ValueError):
  """A config value that cannot work; the message names the key and what is allowed."""


def _allowed_types(reference: ml_collections.ConfigDict, key: str) -> tuple[type, ...]:
  """The types config.KEY accepts, from its default in trainer_config.defaults()."""
  kind = reference.get_type(key)  # A placeholder's declared type, too.
  if reference[key] is None:
    return (kind, type(None))
  if kind is float:
    return (float, int)
  if kind in (tuple, list):
    return (tuple, list)
  return (kind,)


def check_keys_and_types(config: ml_collections.ConfigDict,
                         reference: ml_collections.ConfigDict,
                         origin: str = 'trainer_config.defaults(), as configs/cifar.py does'
                         ) -> None:
  """Every key of `config` is one of `reference` (the defaults it starts from, `origin`), of
  its type, and none is missing."""
  keys = sorted(reference.keys())
  for key in config.keys():
    if key not in reference:
      close = difflib.get_close_matches(key, keys, n=1)
      hint = f'did you mean {close[0]}? ' if close else ''
      raise ConfigError(f'config.{key}: unknown key; {hint}known keys: {", ".join(keys)}')
  missing = sorted(set(keys) - set(config.keys()))
  if missing:
    raise ConfigError(f'config.{missing[0]} is missing; start from {origin}')
  for key in keys:
    types = _allowed_types(reference, key)
    value = config[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
      allowed = ' or '.join('None' if t is type(None) else t.__name__ for t in types)
      raise ConfigError(f'config.{key}={value!r}: must be {allowed}')


def _check_positive(config, key: str) -> None:
  if config[key] <= 0:
    raise ConfigError(f'config.{key}={config[key]!r}: must be a positive integer')


def check_dataset(name: str, what: str = 'config.dataset') -> None:
  """Raises ConfigError unless `name` is a TFDS dataset (registered or embedded here)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  from convae_jax import datasets  # pylint: disable=g-import-not-at-top,unused-import
  known = tfds.list_builders(with_community_datasets=False)
  if name not in known:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f'did you mean {", ".join(close)}? ' if close else ''
    raise ConfigError(f'{what}={name!r} is not a TFDS dataset; {hint}(known: cifar10, '
                      'photo_patches (offline), and tfds.list_builders())')


def _objective(config: ml_collections.ConfigDict, model) -> losses.Objective:
  """config.losses's terms, checked against the model."""
  try:
    objective = losses.Objective(config.losses)
    try:
      channels = model.image_channels
    except NotImplementedError:  # A model of one's own that does not say: RGB assumed.
      channels = 3
    objective.check(model, channels)
  except (ValueError, TypeError) as e:
    message = str(e)
    raise ConfigError(message if message.startswith('config.') else f'config.{message}') from None
  return objective


def check_training(config: ml_collections.ConfigDict, num_devices: int,
                   num_processes: int = 1) -> None:
  """Checks of the settings every trainer shares (trainer_config.defaults()'s optimizer,
  schedule, length, batch, logging, checkpoint and non-finite keys): those of an autoencoder
  run and of a prior's (prior_config.py)."""
  if config.dtype not in trainer_config.DTYPES:
    raise ConfigError(f'config.dtype={config.dtype!r}: must be one of '
                      f'{", ".join(trainer_config.DTYPES)}')
  try:
    cpu_kernels.parse(config.kernels)
  except ValueError as e:
    raise ConfigError(f'config.kernels={config.kernels!r}: {e}') from None
  for key in ('batch_size', 'eval_batch_size', 'log_every_steps', 'eval_every_steps',
              'checkpoint_every_steps', 'max_to_keep', 'accumulate_steps'):
    _check_positive(config, key)
  for key in ('profile_num_steps', 'seed', 'micro_batches'):
    if config[key] < 0:
      raise ConfigError(f'config.{key}={config[key]!r}: must be 0 or more')
  if config.num_train_steps <= 0 and not config.num_epochs > 0:
    raise ConfigError(f'config.num_train_steps={config.num_train_steps} and '
                      f'config.num_epochs={config.num_epochs}: set one of them positive')
  if config.num_train_steps > 0 and config.num_train_steps % config.accumulate_steps:
    raise ConfigError(f'config.num_train_steps={config.num_train_steps} is not a whole number '
                      f'of updates of config.accumulate_steps={config.accumulate_steps} steps; '
                      'use a multiple of it')
  if not config.learning_rate > 0:
    raise ConfigError(f'config.learning_rate={config.learning_rate}: must be positive')
  # Global batches: every device of every process takes an equal share.
  where = f' of {num_processes} processes' if num_processes > 1 else ''
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] % num_devices:
      raise ConfigError(f'config.{key}={config[key]} does not divide over {num_devices} '
                        f'devices{where}; use a multiple of {num_devices}')
  if config.micro_batches and (config.batch_size // num_devices) % config.micro_batches:
    raise ConfigError(f'config.micro_batches={config.micro_batches} does not divide the '
                      f'{config.batch_size // num_devices} images per device; use a divisor')
  if config.optimizer not in optimizer.OPTIMIZERS:
    raise ConfigError(f'config.optimizer={config.optimizer!r}: known optimizers are '
                      f'{", ".join(optimizer.OPTIMIZERS)}')
  if config.schedule not in trainer_config.SCHEDULES:
    raise ConfigError(f'config.schedule={config.schedule!r}: known schedules are '
                      f'{", ".join(trainer_config.SCHEDULES)}')
  for key in ('warmup_steps', 'max_consecutive_skips'):
    if config[key] < 0:
      raise ConfigError(f'config.{key}={config[key]!r}: must be 0 or more')
  for key, rule, ok in (
      ('warmup_fraction', 'lie in [0, 1)', lambda v: 0 <= v < 1),
      ('end_learning_rate', 'be 0 or more', lambda v: v >= 0),
      ('adam_b1', 'lie in [0, 1)', lambda v: 0 <= v < 1),
      ('adam_b2', 'lie in [0, 1)', lambda v: 0 <= v < 1),
      ('adam_eps', 'be positive', lambda v: v > 0),
      ('weight_decay', 'be 0 or more', lambda v: v >= 0),
      ('momentum', 'lie in [0, 1)', lambda v: 0 <= v < 1),
      ('grad_clip_norm', 'be 0 (off) or positive', lambda v: v >= 0),
      ('skip_grad_norm_above', 'be 0 (off) or positive', lambda v: v >= 0),
      ('ema_decay', 'lie in [0, 1) (0 = off; e.g. 0.999)', lambda v: 0 <= v < 1)):
    if not ok(config[key]):
      raise ConfigError(f'config.{key}={config[key]!r}: must {rule}')
  if config.on_non_finite not in trainer_config.ON_NON_FINITE:
    raise ConfigError(f'config.on_non_finite={config.on_non_finite!r}: must be one of '
                      f'{", ".join(trainer_config.ON_NON_FINITE)}')


def check(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> None:
  """Validates `config` for a run on `num_devices` devices (of all `num_processes` processes),
  config.model included (its parts' settings, and what its output range allows): once it
  passes, `models.create_model(config.model, config.dtype)` builds the model."""
  check_keys_and_types(config, trainer_config.defaults())
  check_training(config, num_devices, num_processes)
  try:
    model = models.create_model(config.model, config.dtype)
  except (ValueError, TypeError, AttributeError) as e:
    raise ConfigError(f'config.model: {e}') from None
  objective = _objective(config, model)
  if config.num_grid_images < 0:
    raise ConfigError(f'config.num_grid_images={config.num_grid_images!r}: must be 0 or more')
  if config.micro_batches > 1 and objective.adaptive:
    raise ConfigError(f'config.micro_batches={config.micro_batches}: the adaptive weight of '
                      f'config.losses.{objective.adaptive[0]} is one of the whole batch; set '
                      '--config.micro_batches=1 (or 0, automatic)')
  if config.input_mode not in trainer_config.INPUT_MODES:
    raise ConfigError(f'config.input_mode={config.input_mode!r}: must be one of '
                      f'{", ".join(trainer_config.INPUT_MODES)}')
  for key in ('in_memory_limit_mb', 'shuffle_buffer'):
    _check_positive(config, key)
  if config.image_size is not None and config.image_size < 1:
    raise ConfigError(f'config.image_size={config.image_size}: must be a positive number of '
                      'pixels, or None to keep the dataset\'s size')
  if len(config.input_range) != 2 or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
      for v in config.input_range):
    raise ConfigError(f'config.input_range={tuple(config.input_range)}: must be two numbers '
                      '(low, high), e.g. --config.input_range="(0.0, 1.0)"')
  low, high = config.input_range
  if not low < high:
    raise ConfigError(f'config.input_range={tuple(config.input_range)}: needs low < high, e.g. '
                      '--config.input_range="(0.0, 1.0)"')
  out_low, out_high = model.output_range
  what = model.label or config.model.name
  if model.exact_input_range is not None and (low, high) != tuple(model.exact_input_range):
    raise ConfigError(
        f'config.input_range={tuple(config.input_range)}: model {what!r} (its likelihood) is '
        f'defined on pixels in exactly {tuple(model.exact_input_range)}; set '
        f'--config.input_range="{tuple(model.exact_input_range)}" or use model.likelihood.name=mse')
  if not out_low <= low < high <= out_high:
    raise ConfigError(
        f'config.input_range={tuple(config.input_range)} lies outside what model '
        f'{what!r} can output, {tuple(model.output_range)}: set '
        f'--config.input_range="{tuple(model.output_range)}" so reconstructions can match inputs')
  if config.data_dir is not None:
    try:
      paths.check_dir(config.data_dir, 'config.data_dir', writable=False)
    except errors.UserError as e:
      raise ConfigError(str(e)) from None
  check_dataset(config.dataset)
