"""Autoencoders on CIFAR-10: the seed model by default, other variants by name.

    python launch.py --config configs/cifar.py --workdir /tmp/cae
    python launch.py --config configs/cifar.py:vae --workdir /tmp/vae --config.model.beta=0.5

Variants (the string after ':'): cae (the seed, default), resae (deeper residual AE, same
8x8x32 latent), vae, vqvae, denoising (the seed trained on noisy inputs), denoising-resae (resae on noisy
inputs).
"""
import ml_collections


def _model(variant: str) -> ml_collections.ConfigDict:
  """The `config.model` of each variant: its registered name and the settings it takes."""
  if variant == 'cae':
    return ml_collections.ConfigDict({'name': 'cae', 'features': (16, 32)})
  if variant == 'resae':
    return ml_collections.ConfigDict({
        'name': 'resae', 'widths': (16, 32), 'blocks_per_stage': 1,
        'normalization': 'group', 'latent_channels': 32})
  if variant == 'vae':
    return ml_collections.ConfigDict({
        'name': 'vae', 'features': (16, 32), 'latent_channels': 32, 'beta': 1.0,
        'kl_warmup_steps': 2000})
  if variant == 'vqvae':
    return ml_collections.ConfigDict({
        'name': 'vqvae', 'features': (16, 32), 'code_dim': 32, 'num_codes': 512,
        'commitment_cost': 0.25, 'use_ema': True, 'ema_decay': 0.99})
  if variant == 'denoising' or variant.startswith('denoising-'):
    # 'denoising-resae' wraps resae, with resae's settings under model.base.
    base = variant.partition('-')[2] or 'cae'
    if base not in DETERMINISTIC:
      raise ValueError(f'configs/cifar.py: cannot wrap {base!r} in denoising; use one of: '
                       + ', '.join(f'denoising-{name}' for name in DETERMINISTIC))
    return ml_collections.ConfigDict({
        'name': 'denoising', 'base': _model(base), 'noise': 'gaussian', 'noise_std': 0.1,
        'mask_prob': 0.25})
  raise ValueError(f'configs/cifar.py: unknown variant {variant!r}; known: {", ".join(VARIANTS)}')


DETERMINISTIC = ('cae', 'resae')
VARIANTS = ('cae', 'resae', 'vae', 'vqvae', 'denoising', 'denoising-resae')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` picks a variant (`configs/cifar.py:vae`); none gives the seed model."""
  config = ml_collections.ConfigDict()

  # Data: a TFDS name; data_dir None means TFDS's default (or $TFDS_DATA_DIR).
  config.dataset = 'cifar10'
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.train_split = 'train'
  config.eval_split = 'test'
  # Pixels are scaled into this range; it must lie inside what the model's output can reach
  # (the seed's Sigmoid gives [0, 1]).
  config.input_range = (0.0, 1.0)

  config.model = _model(arg or 'cae')

  config.optimizer = 'adam'
  config.learning_rate = 1e-3

  # Length: num_train_steps when positive, else num_epochs over the train split.
  config.batch_size = 128  # Global, over all devices of all processes.
  # Each device's batch in this many parts, averaged: 1 on GPU/TPU; on CPU, 4 lets XLA run
  # the parts on different cores (README, Performance).
  config.micro_batches = 1
  config.num_epochs = 20.0
  config.num_train_steps = -1

  config.eval_batch_size = 500
  config.log_every_steps = 100
  config.eval_every_steps = 2000  # Also evaluated at the end.
  config.checkpoint_every_steps = 1000  # Also saved at the end.
  config.max_to_keep = 3
  config.num_grid_images = 32  # Test images shown beside their reconstructions.
  config.profile_num_steps = 5  # Steps traced into the workdir for TensorBoard; 0 = off.

  # A NaN/Inf loss or gradient: 'stop' the run (nothing non-finite is ever saved), or 'skip'
  # that step's update and go on.
  config.on_non_finite = 'stop'

  config.seed = 0
  return config
