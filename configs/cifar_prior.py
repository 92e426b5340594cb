"""Priors over the codes of a trained VQ or FSQ autoencoder: the second stage that makes it
generate. The prior is picked by name (convae_jax/models/priors); the first stage is a
workdir or a shipped preset.

    python launch.py --config configs/cifar_prior.py:transformer --workdir /tmp/prior \
        --config.autoencoder=pretrained:vqvae-resnet
    convae sample --workdir /tmp/prior --num 64 --temperature 1.0 --top_k 0 --seed 0 \
        --output /tmp/prior_samples

docs/priors.md says what each prior is, what the figures mean and how to add one.
"""
import ml_collections

from convae_jax import prior_config
from convae_jax.models import parts, priors

# preset: the prior's settings where they differ from its defaults.
# Sized to train in about an hour on a 2-core CPU (docs/priors.md has the runs): about 0.1
# GFLOP per code grid forward each.
PRESETS = {
    # taming-transformers' second stage, small: a causal transformer in raster order.
    'transformer': ('transformer', {'width': 128, 'depth': 4, 'num_heads': 4}),
    # The VQ-VAE paper's prior: a gated PixelCNN.
    'pixelcnn': ('pixelcnn', {'width': 96, 'depth': 8, 'kernel_size': 3}),
}

TRAINING = {'schedule': 'warmup_cosine', 'warmup_fraction': 0.02, 'learning_rate': 1e-3,
            'grad_clip_norm': 1.0, 'num_epochs': 8.0, 'ema_decay': 0.999,
            'optimizer': 'adamw', 'weight_decay': 0.01, 'eval_every_steps': 500,
            'checkpoint_every_steps': 250}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` picks a prior (`configs/cifar_prior.py:pixelcnn`); none gives the transformer."""
  preset = arg or 'transformer'
  if preset not in PRESETS:
    raise ValueError(f'configs/cifar_prior.py: unknown preset {preset!r}; known: '
                     f'{", ".join(PRESETS)}')
  config = prior_config.defaults()  # Every setting, at its default.
  config.autoencoder = 'pretrained:vqvae-resnet'
  name, settings = PRESETS[preset]
  config.model = parts.part_config(priors.PRIORS, name, priors.FILLED_IN, **settings)
  config.update(TRAINING)
  return config
