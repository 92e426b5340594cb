"""Autoencoders on CIFAR-10: the seed model by default, other variants by name.

    python launch.py --config configs/cifar.py --workdir /tmp/cae
    python launch.py --config configs/cifar.py:vae --workdir /tmp/vae --config.model.beta=0.5

Variants (the string after ':'): cae (the seed, default), resae (deeper residual AE, same
8x8x32 latent), vae, vqvae, denoising (the seed trained on noisy inputs), denoising-resae (resae on noisy
inputs).
"""
import ml_collections

from convae_jax import trainer_config


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
    # 'denoising-resae' wraps resae, with resae's settings under model.base (the denoising
    # model refuses a base that is not deterministic).
    base = variant.partition('-')[2] or 'cae'
    return ml_collections.ConfigDict({
        'name': 'denoising', 'base': _model(base), 'noise': 'gaussian', 'noise_std': 0.1,
        'mask_prob': 0.25})
  raise ValueError(f'configs/cifar.py: unknown variant {variant!r}; known: {", ".join(VARIANTS)}')


VARIANTS = ('cae', 'resae', 'vae', 'vqvae', 'denoising', 'denoising-resae')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` picks a variant (`configs/cifar.py:vae`); none gives the seed model."""
  config = trainer_config.defaults()  # Every trainer setting, at its default.
  config.dataset = 'cifar10'
  config.model = _model(arg or 'cae')
  return config
