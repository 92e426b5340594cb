"""Every built-in variant trains through the real loop and writes its metrics and pictures."""
import json
import os

import pytest

from configs import cifar
from convae_jax import models, train

from conftest import tiny

# What each variant adds to the generic eval/{loss,mse,psnr,ssim} and reconstruction grid.
EXTRA_METRICS = {'vae': ('bpd', 'nelbo', 'kl', 'loss_nll', 'loss_kl'),
                 'vqvae': ('perplexity', 'unused_codes', 'loss_commitment')}
EXTRA_PICTURES = {'vae': ('prior_samples', 'interpolation'), 'vqvae': ('code_usage',),
                  'denoising': ('corrupted_and_denoised',),
                  'denoising-resae': ('corrupted_and_denoised',)}


def test_every_builtin_model_has_a_config_variant():
  builtin = {name for name in models.known_models()
             if models.get_model_class(name).__module__.startswith('convae_jax.')}
  assert builtin <= set(cifar.VARIANTS)
  assert builtin == {cifar.get_config(variant).model.name for variant in cifar.VARIANTS}


# The residual and generative variants compile for longest: in the full suite only.
HEAVY = ('resae', 'denoising-resae', 'vae', 'vqvae')


@pytest.mark.parametrize('variant', [
    pytest.param(v, marks=pytest.mark.slow) if v in HEAVY else v for v in cifar.VARIANTS])
def test_variant_trains_with_falling_loss(variant, photo_data_dir, tmp_path):
  config = tiny(cifar.get_config(variant), dataset='photo_patches', data_dir=photo_data_dir,
                batch_size=32, eval_batch_size=128, num_train_steps=12, log_every_steps=4,
                eval_every_steps=12, checkpoint_every_steps=12, learning_rate=3e-3)
  train.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl', encoding='utf-8')]
  losses = [l['train/loss'] for l in lines if 'train/loss' in l]
  assert len(losses) == 3 and losses[-1] < losses[0], losses
  final_eval = [l for l in lines if 'eval/mse' in l][-1]
  for name in ('loss', 'mse', 'psnr', 'ssim') + EXTRA_METRICS.get(variant, ()):
    assert f'eval/{name}' in final_eval, (name, final_eval)
  for picture in ('reconstructions',) + EXTRA_PICTURES.get(variant, ()):
    assert os.path.getsize(tmp_path / 'images' / f'{picture}_12.png') > 0
  assert os.listdir(tmp_path / 'checkpoints') == ['12']
