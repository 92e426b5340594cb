"""Autoencoders on CIFAR-10: the seed model by default, other presets by name.

    python launch.py --config configs/cifar.py --workdir /tmp/cae
    python launch.py --config configs/cifar.py:vae --workdir /tmp/vae \
        --config.model.bottleneck.beta=0.5

A preset (the string after ':') is a backbone, a bottleneck, a likelihood and a corruption
(models.parts), each with every setting listed, so any of them can be set from the command
line; docs/parts.md says what each part does and how to add one.
"""
import ml_collections

from convae_jax import trainer_config
from convae_jax.losses import term
from convae_jax.models import discriminators, parts

# preset: (backbone, bottleneck, likelihood, corruption).
PRESETS = {
    'cae': ('seed', 'identity', 'mse', 'none'),  # The seed model.
    'resae': ('resnet', 'identity', 'mse', 'none'),
    'vae': ('seed', 'gaussian', 'discretized_logistic', 'none'),
    'vqvae': ('seed', 'vq', 'mse', 'none'),
    'fsq': ('seed', 'fsq', 'mse', 'none'),
    'denoising': ('seed', 'identity', 'mse', 'gaussian'),
    'denoising-resae': ('resnet', 'identity', 'mse', 'gaussian'),
    'vae-resnet': ('resnet', 'gaussian', 'logistic_mixture', 'none'),
    'vqvae-resnet': ('resnet', 'vq', 'mse', 'none'),
    'fsq-resnet': ('resnet', 'fsq', 'mse', 'none'),
    # With perceptual and adversarial terms (LOSSES): VQGAN's recipe, and latent diffusion's
    # KL autoencoder's.
    'vqgan-resnet': ('resnet', 'vq', 'mse', 'none'),
    'klae-resnet': ('resnet', 'gaussian', 'mse', 'none'),
}
VARIANTS = tuple(PRESETS)

# The presets' settings where they differ from the part's defaults.
SETTINGS = {
    'bottleneck': {
        'gaussian': {'kl_warmup_steps': 2000},
        # The entropy term keeps all codes in use from the first epoch (docs/results.md).
        'fsq': {'entropy_weight': 0.01},
    },
}
# One preset's part settings, over SETTINGS, from its quality runs (docs/results.md).
PRESET_SETTINGS = {
    # The entropy term spreads the codes over the first half of the run, then fades out (a
    # constant weight cost PSNR: docs/results.md).
    'fsq-resnet': {'bottleneck': {'entropy_decay_steps': 3125}},
    # A learned prior whose samples vary together across the latent grid.
    'vae-resnet': {'bottleneck': {'prior': 'low_rank'}},
    # Latent diffusion's KL weight: the latent is nearly deterministic, its scale kept in check.
    'klae-resnet': {'bottleneck': {'beta': 1e-6, 'kl_warmup_steps': 0}},
}

# The presets' loss terms beyond the model's own (config.losses; docs/losses.md). taming's
# VQGAN and latent diffusion's autoencoder add LPIPS-VGG16 at 1.0 to an L1 pixel loss, and the
# adaptive adversarial term at 0.8 and 0.5, the discriminator starting once the autoencoder
# reconstructs. Scaled to 32x32 images on a CPU: LPIPS-AlexNet (VGG16 costs several times the
# whole step: benchmarks/loss_terms.py), at 0.1 beside an MSE, whose gradient at these errors
# is about a tenth of L1's; a narrower PatchGAN; the start a third into the 8-epoch run; the
# adversarial weight 0.1 (MaskGIT's and MAGVIT's), as taming's 0.8 undid the reconstructions
# when the discriminator started (docs/losses.md).
ADVERSARIAL = {'weight': 0.1, 'start_step': 1000, 'loss': 'hinge', 'adaptive_weight': True,
               'discriminator': {'name': 'patchgan', 'widths': (32, 64, 128)}}
LOSSES = {
    'vqgan-resnet': {'lpips': {'weight': 0.1, 'network': 'alexnet'}, 'adversarial': ADVERSARIAL},
    'klae-resnet': {'lpips': {'weight': 0.1, 'network': 'alexnet'}, 'adversarial': ADVERSARIAL},
}


# The presets' trainer settings where they differ from trainer_config.defaults(): what reached
# each preset's quality target (docs/results.md has the runs).
RESNET_TRAINING = {'schedule': 'warmup_cosine', 'warmup_fraction': 0.02,
                   'learning_rate': 2e-3, 'grad_clip_norm': 1.0, 'num_epochs': 8.0}
TRAINING = {
    'resae': RESNET_TRAINING,
    'vqvae-resnet': {**RESNET_TRAINING, 'num_epochs': 16.0},  # 8 missed its target.
    'fsq-resnet': {**RESNET_TRAINING, 'num_epochs': 16.0},
    'vae-resnet': RESNET_TRAINING,
    'vqgan-resnet': RESNET_TRAINING,  # 16 epochs would not end within two hours here.
    'klae-resnet': RESNET_TRAINING,
}


def model(preset: str) -> ml_collections.ConfigDict:
  """`config.model` of a preset."""
  if preset not in PRESETS:
    raise ValueError(f'configs/cifar.py: unknown preset {preset!r}; known: {", ".join(PRESETS)}')
  backbone, bottleneck, likelihood, corruption = PRESETS[preset]
  config = ml_collections.ConfigDict({'name': 'autoencoder', 'image_channels': 3})
  for kind, kinds, name in (('backbone', parts.BACKBONES, backbone),
                            ('bottleneck', parts.BOTTLENECKS, bottleneck),
                            ('likelihood', parts.LIKELIHOODS, likelihood),
                            ('corruption', parts.CORRUPTIONS, corruption)):
    settings = {**SETTINGS.get(kind, {}).get(name, {}),
                **PRESET_SETTINGS.get(preset, {}).get(kind, {})}
    config[kind] = parts.part_config(kinds, name, **settings)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` picks a preset (`configs/cifar.py:vae`); none gives the seed model."""
  config = trainer_config.defaults()  # Every trainer setting, at its default.
  config.dataset = 'cifar10'
  config.model = model(arg or 'cae')
  config.update(TRAINING.get(arg or 'cae', {}))
  config.losses = losses(arg or 'cae')
  return config


def losses(preset: str) -> ml_collections.ConfigDict:
  """`config.losses` of a preset: each term with every setting listed."""
  config = ml_collections.ConfigDict()
  for name, settings in LOSSES.get(preset, {}).items():
    settings = dict(settings)
    if 'discriminator' in settings:
      discriminator = dict(settings['discriminator'])
      settings['discriminator'] = parts.part_config(
          discriminators.DISCRIMINATORS, discriminator.pop('name'), **discriminator)
    config[name] = parts.part_config(term.TERMS, name, **settings)
    del config[name]['name']  # The key names the term.
  return config
