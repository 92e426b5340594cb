"""Every backbone x bottleneck combination (the presets) trains through the real loop and
writes its metrics and pictures."""
import json
import os

import pytest

from configs import cifar
from convae_jax import models, train, trainer_config

from conftest import tiny

# What each bottleneck and likelihood adds to the generic eval/{loss,mse,psnr,ssim}.
EXTRA_METRICS = {'gaussian': ('kl', 'loss_kl'), 'vq': ('loss_commitment', 'codes_used',
                                                      'code_perplexity'),
                 'fsq': ('codes_used', 'code_perplexity'),
                 'discretized_logistic': ('loss_nll', 'nll_bpd'),
                 'logistic_mixture': ('loss_nll', 'nll_bpd')}
EXTRA_PICTURES = {'gaussian': ('prior_samples', 'interpolation'), 'vq': ('code_usage',),
                  'fsq': ('code_usage',)}


def test_every_backbone_and_bottleneck_combine_in_a_preset():
  builtin = lambda kinds: [n for n in kinds.names()
                           if kinds.get(n).__module__.startswith('convae_jax.')]
  combinations = {cifar.PRESETS[p][:2] for p in cifar.PRESETS}
  assert combinations >= {(b, n) for b in builtin(models.BACKBONES)
                          for n in builtin(models.BOTTLENECKS)}


def test_presets_carry_their_tuned_trainer_settings():
  defaults = trainer_config.defaults()
  for preset, settings in cifar.TRAINING.items():
    assert preset in cifar.PRESETS, preset
    unknown = set(settings) - set(defaults)
    assert not unknown, (preset, unknown)  # A typo would add a setting the trainer ignores.
    config = cifar.get_config(preset)
    assert {k: config[k] for k in settings} == settings, preset
  # A preset without tuned settings trains at the trainer's defaults.
  untuned = cifar.get_config('cae')
  assert untuned.schedule == defaults.schedule and untuned.num_epochs == defaults.num_epochs


# The residual backbone and the denoising variant of it compile for longest: full suite only.
SLOW = ('resae', 'denoising-resae', 'vae-resnet', 'vqvae-resnet', 'fsq-resnet')


# The presets with loss terms train through launch.py in test_losses.py.
@pytest.mark.parametrize('preset', [
    pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p
    for p in cifar.VARIANTS if p != 'denoising-resae' and not cifar.get_config(p).losses])
def test_preset_trains_with_falling_loss(preset, photo_data_dir, tmp_path):
  config = tiny(cifar.get_config(preset), dataset='photo_patches', data_dir=photo_data_dir,
                batch_size=32, eval_batch_size=128, num_train_steps=12, log_every_steps=4,
                eval_every_steps=12, checkpoint_every_steps=12, learning_rate=3e-3)
  train.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl', encoding='utf-8')]
  losses = [l['train/loss'] for l in lines if 'train/loss' in l]
  assert len(losses) == 3 and losses[-1] < losses[0], losses
  final_eval = [l for l in lines if 'eval/mse' in l][-1]
  _, bottleneck, likelihood, corruption = cifar.PRESETS[preset]
  expected = ('loss', 'mse', 'psnr', 'ssim') + EXTRA_METRICS.get(bottleneck, ()) + (
      EXTRA_METRICS.get(likelihood, ()))
  if models.LIKELIHOODS.get(likelihood).proper and bottleneck != 'identity':
    expected += ('bpd', 'nelbo')
  for name in expected:
    assert f'eval/{name}' in final_eval, (name, final_eval)
  assert 'eval/lpips' not in final_eval  # tiny() sets config.eval_lpips=False.
  pictures = ('reconstructions',) + EXTRA_PICTURES.get(bottleneck, ()) + (
      ('corrupted_and_denoised',) if corruption != 'none' else ())
  for picture in pictures:
    assert os.path.getsize(tmp_path / 'images' / f'{picture}_12.png') > 0
  assert os.listdir(tmp_path / 'checkpoints') == ['12']
