"""Checks of a config made before anything loads or compiles: one clear line per problem."""
import ml_collections

from convae_jax import models

OPTIMIZERS = ('adam', 'adamw', 'sgd')


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what is allowed."""


def _positive_int(config, key: str) -> None:
  value = config[key]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'config.{key}={value!r}: must be a positive integer')


def check(config: ml_collections.ConfigDict, num_devices: int) -> models.Autoencoder:
  """Validates `config` for a run on `num_devices` devices; returns the model it describes."""
  try:
    model = models.create_model(config.model)
  except (ValueError, TypeError) as e:
    raise ConfigError(f'config.model: {e}') from None

  for key in ('batch_size', 'eval_batch_size', 'log_every_steps', 'eval_every_steps',
              'checkpoint_every_steps', 'max_to_keep'):
    _positive_int(config, key)
  if config.num_train_steps <= 0 and not config.num_epochs > 0:
    raise ConfigError(f'config.num_train_steps={config.num_train_steps} and '
                      f'config.num_epochs={config.num_epochs}: set one of them positive')
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] % num_devices:
      raise ConfigError(f'config.{key}={config[key]} does not divide over {num_devices} devices; '
                        f'use a multiple of {num_devices}')
  if config.optimizer not in OPTIMIZERS:
    raise ConfigError(f'config.optimizer={config.optimizer!r}: known optimizers are '
                      f'{", ".join(OPTIMIZERS)}')

  low, high = config.input_range
  out_low, out_high = model.output_range
  if not (out_low <= low < high <= out_high):
    raise ConfigError(
        f'config.input_range={tuple(config.input_range)} lies outside what model '
        f'{config.model.name!r} can output, {tuple(model.output_range)}: set '
        f'--config.input_range="{tuple(model.output_range)}" so reconstructions can match inputs')
  return model
