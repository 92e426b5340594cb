"""Every key a prior run reads (prior_train.py), with its default, and their checks.

A prior config is the trainer's settings (trainer_config.defaults(): optimizer, schedule,
EMA, length, batches, logging, checkpoints) less those of images and loss terms, plus the
first stage it models and the samples each evaluation shows. configs/cifar_prior.py starts
from `defaults()`.
"""
import ml_collections

from convae_jax import config_checks, errors, paths, pretrained, trainer_config
from convae_jax.models import priors

# The autoencoder trainer's keys that a prior run has no use for: its data are the first
# stage's codes (their dataset and splits are the first stage's unless set here).
NOT_FOR_PRIORS = ('losses', 'input_range', 'input_mode', 'in_memory_limit_mb',
                  'shuffle_buffer', 'eval_lpips', 'num_grid_images', 'init_from')


def defaults() -> ml_collections.ConfigDict:
  """A prior run's settings at their defaults; `model` (the prior) is the config file's."""
  config = trainer_config.defaults()
  for key in NOT_FOR_PRIORS:
    del config[key]
  # The first stage: the workdir of a trained autoencoder with discrete codes (vq, fsq), or
  # 'pretrained:NAME'. Its codes of the train and eval splits are computed once into
  # WORKDIR/codes/ and kept.
  config.autoencoder = ''
  # None: the first stage's (its dataset, splits and image size; data_dir, where it is here).
  config.dataset = ml_collections.config_dict.placeholder(str)
  config.train_split = ml_collections.config_dict.placeholder(str)
  config.eval_split = ml_collections.config_dict.placeholder(str)
  config.model = ml_collections.ConfigDict({'name': 'transformer'})
  # Samples drawn and decoded with the first stage's decoder at each evaluation
  # (images/samples_STEP.png), at this temperature, from the top_k likeliest codes (0: all).
  config.num_samples = 16
  config.sample_temperature = 1.0
  config.sample_top_k = 0
  return config


def check(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> None:
  """Validates a prior config before anything is read or written: its keys and types, the
  shared training settings, the prior's own settings and the first stage's address (that
  it holds codes is checked once it is loaded, prior_train.py)."""
  config_checks.check_keys_and_types(config, defaults(),
                                     'prior_config.defaults(), as configs/cifar_prior.py does')
  config_checks.check_training(config, num_devices, num_processes)
  try:  # With stand-in num_codes and grid: the first stage's replace them.
    priors.create_prior(config.model, 2, (1, 1), config.dtype)
  except (ValueError, TypeError, AttributeError) as e:
    raise config_checks.ConfigError(f'config.model: {e}') from None
  if not config.autoencoder:
    raise config_checks.ConfigError(
        'config.autoencoder is not set: name the first stage whose codes the prior models, '
        'e.g. --config.autoencoder=pretrained:vqvae-resnet or the --workdir of a vq or fsq run')
  name = pretrained.name_of(config.autoencoder)
  if name is not None and name not in pretrained.names():
    raise config_checks.ConfigError(f'config.autoencoder={config.autoencoder!r}: no such '
                                    f'pretrained model; shipped: {", ".join(pretrained.names())}')
  for key in ('num_samples', 'sample_top_k'):
    if config[key] < 0:
      raise config_checks.ConfigError(f'config.{key}={config[key]!r}: must be 0 or more')
  if not config.sample_temperature > 0:
    raise config_checks.ConfigError(
        f'config.sample_temperature={config.sample_temperature!r}: must be positive')
  if config.image_size is not None and config.image_size < 1:
    raise config_checks.ConfigError(f'config.image_size={config.image_size}: must be a '
                                    'positive number of pixels, or None for the first stage\'s')
  if config.data_dir is not None:
    try:
      paths.check_dir(config.data_dir, 'config.data_dir', writable=False)
    except errors.UserError as e:
      raise config_checks.ConfigError(str(e)) from None
  if config.dataset is not None:
    config_checks.check_dataset(config.dataset)
