"""Priors over the codes of a VQ or FSQ first stage (configs/cifar_prior.py): the causal
order of both priors, codes decoded as the autoencoder decodes them, a tiny prior trained
through launch.py that resumes exactly and samples, and the refusals."""
import json
import os
import re

import jax
import ml_collections
import numpy as np
import pytest

from conftest import REPO, run_cli, run_launch, tiny
from convae_jax import errors, inference, loop, models, preemption, prior_train, train
from convae_jax.models import priors

TINY_PRIORS = {'transformer': {'width': 16, 'depth': 1, 'num_heads': 2},
               'pixelcnn': {'width': 8, 'depth': 2, 'kernel_size': 3}}


@pytest.mark.parametrize('name', sorted(TINY_PRIORS))
def test_a_codes_prediction_depends_on_the_codes_before_it_only(name):
  """Changing the codes at and after position p leaves the logits up to p as they were;
  changing the code just before p, or the one above it, changes p's."""
  h, w, k = 4, 5, 16
  prior = priors.create_prior(ml_collections.ConfigDict({'name': name, **TINY_PRIORS[name]}),
                              k, (h, w))
  codes = np.asarray(jax.random.randint(jax.random.key(0), (2, h * w), 0, k))
  variables = prior.init({'params': jax.random.key(1)}, codes.reshape(2, h, w))
  logits_of = lambda c: np.asarray(prior.apply(variables, c.reshape(2, h, w), False,
                                               method='logits')).reshape(2, h * w, k)
  base = logits_of(codes)
  for p in range(h * w):
    later_changed = codes.copy()
    later_changed[:, p:] = (later_changed[:, p:] + 7) % k
    np.testing.assert_array_equal(logits_of(later_changed)[:, :p + 1], base[:, :p + 1])
    for earlier in ([p - 1] if p % w else []) + ([p - w] if p >= w else []):
      changed = codes.copy()
      changed[:, earlier] = (changed[:, earlier] + 7) % k
      assert np.abs(logits_of(changed)[:, p] - base[:, p]).max() > 0, (p, earlier)


def test_sampling_draws_from_the_top_k_codes_only():
  prior = priors.create_prior(ml_collections.ConfigDict(
      {'name': 'transformer', **TINY_PRIORS['transformer']}), 16, (2, 3))
  variables = prior.init({'params': jax.random.key(1)}, np.zeros((1, 2, 3), np.int32))
  first_logits = np.asarray(prior.apply(variables, np.zeros((1, 2, 3), np.int32), False,
                                        method='logits'))[0, 0, 0]
  codes = np.asarray(priors.sample(prior, variables, jax.random.key(0), 64, 1.0, 2))
  assert codes.shape == (64, 2, 3)
  # The first position's logits do not depend on any code: its draws are its 2 likeliest.
  assert set(codes[:, 0, 0]) <= set(np.argsort(first_logits)[-2:])
  again = np.asarray(priors.sample(prior, variables, jax.random.key(0), 64, 1.0, 2))
  np.testing.assert_array_equal(codes, again)


@pytest.mark.parametrize('bottleneck', [{'name': 'vq'}, {'name': 'vq', 'codebook': 'learned',
                                                        'code_dim': 8}, {'name': 'fsq'}])
def test_decoded_codes_are_the_models_reconstructions(bottleneck):
  from configs import cifar  # pylint: disable=g-import-not-at-top
  config = cifar.get_config('vqvae')
  config.model.bottleneck = {**bottleneck}
  model = models.create_model(config.model)
  images = jax.random.uniform(jax.random.key(0), (3, 32, 32, 3))
  variables = model.init({'params': jax.random.key(1)}, images, train=False)
  # One training step, so a codebook initialized from data is in use.
  _, state = model.apply(variables, images, train=True,
                         mutable=[k for k in variables if k != 'params'])
  variables = {**variables, **state}
  output = model.apply(variables, images, train=False)
  codes = model.apply(variables, images, method='codes')
  np.testing.assert_array_equal(codes, output.codes)
  np.testing.assert_allclose(model.apply(variables, codes, method='decode_codes'),
                             output.reconstruction, atol=1e-6)


@pytest.fixture(scope='module')
def vq_workdir(tmp_path_factory, photo_data_dir):
  """A seed vqvae trained for two steps on photo_patches by the real trainer."""
  from configs import photos  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('vqvae'))
  train.train_and_evaluate(tiny(photos.get_config('vqvae'), data_dir=photo_data_dir,
                                num_train_steps=2), workdir)
  return workdir


def prior_config(first_stage, data_dir, name='transformer', **overrides):
  from configs import cifar_prior  # pylint: disable=g-import-not-at-top
  config = cifar_prior.get_config(name)
  config.model.update(TINY_PRIORS[name])
  config.update(autoencoder=first_stage, data_dir=data_dir, batch_size=8, eval_batch_size=8,
                num_train_steps=4, log_every_steps=2, eval_every_steps=2,
                checkpoint_every_steps=2, num_samples=4, profile_num_steps=0)
  config.update(overrides)
  return config


def launch_args(workdir, first_stage, data_dir, *more, name='transformer'):
  tiny_model = [f'--config.model.{k}={v}' for k, v in TINY_PRIORS[name].items()]
  return ['--config', os.path.join(REPO, f'configs/cifar_prior.py:{name}'), '--workdir',
          str(workdir), f'--config.autoencoder={first_stage}', f'--config.data_dir={data_dir}',
          '--config.num_train_steps=4', '--config.batch_size=8', '--config.eval_batch_size=8',
          '--config.log_every_steps=2', '--config.eval_every_steps=2',
          '--config.checkpoint_every_steps=2', '--config.num_samples=4', *tiny_model, *more]


@pytest.mark.parametrize('name', sorted(TINY_PRIORS))
def test_a_prior_stopped_and_resumed_ends_where_an_unstopped_one_does(
    name, vq_workdir, photo_data_dir, tmp_path, monkeypatch):
  config = lambda: prior_config(vq_workdir, photo_data_dir, name)  # EMA on, 4 devices.
  straight = prior_train.train_and_evaluate(config(), str(tmp_path / 'a'))
  with monkeypatch.context() as patch:
    patch.setattr(loop, 'stop_agreed', lambda stop, step, config, is_last: step == 2)
    with pytest.raises(preemption.Preempted):
      prior_train.train_and_evaluate(config(), str(tmp_path / 'b'))
  assert sorted(os.listdir(tmp_path / 'b' / 'checkpoints')) == ['2']
  resumed = prior_train.train_and_evaluate(config(), str(tmp_path / 'b'))
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
  jax.tree.map(np.testing.assert_array_equal, straight.ema, resumed.ema)
  # The codes were computed once, by the first launch, and read back by the second.
  about = json.load(open(tmp_path / 'b' / 'codes' / 'about.json', encoding='utf-8'))
  assert about['grid'] == [8, 8] and about['source']['autoencoder'] == vq_workdir
  lines = [json.loads(l) for l in open(tmp_path / 'a' / 'metrics.jsonl', encoding='utf-8')]
  final = [l for l in lines if 'eval/bits_per_code' in l][-1]
  assert final['step'] == 4 and 'eval_raw/bits_per_code' in final
  assert final['eval/marginal_entropy_bits'] == pytest.approx(
      about['eval_marginal_entropy_bits'])
  assert 0 < final['eval/bits_per_code'] < np.log2(512) + 1
  assert final['eval/prior_bpd'] == pytest.approx(final['eval/bits_per_code'] * 64 / 3072)
  assert 'eval/bpd' not in final  # The first stage's MSE gives no reconstruction term.


@pytest.mark.slow
def test_a_tiny_prior_trains_through_launch_and_samples(vq_workdir, photo_data_dir, tmp_path):
  workdir = tmp_path / 'prior'
  # Without dropout, whose draws differ per device, and with SGD (Adam's first steps turn the
  # rounding noise of a zero gradient, as of attention's key bias, into whole updates), so
  # that 1 device and 4 can be compared.
  result = run_launch(launch_args(workdir, vq_workdir, photo_data_dir,
                                  '--config.model.dropout=0.0', '--config.optimizer=sgd'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Done: trained to step 4 of 4' in result.stderr.strip().splitlines()[-1]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  assert os.path.getsize(workdir / 'images' / 'samples_4.png') > 0
  codes = np.load(workdir / 'codes' / 'eval.npy')
  assert codes.dtype == np.int32 and codes.shape[1:] == (8, 8) and codes.max() < 512
  # The same global batch over this process's 4 devices reaches the same parameters.
  config = prior_config(vq_workdir, photo_data_dir)
  config.model.dropout, config.optimizer = 0.0, 'sgd'
  four = prior_train.train_and_evaluate(config, str(tmp_path / 'four_devices'))
  one = inference.load(str(workdir), weights='raw').state.params
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  # The command line and Python draw the same samples for the same seed.
  out = tmp_path / 'samples'
  code, stdout, stderr = run_cli('sample', '--workdir', workdir, '--num', 4, '--temperature',
                                 0.8, '--top_k', 5, '--seed', 1, '--output', out)
  assert code == 0, stderr
  assert 'wrote 4 samples' in stdout and os.path.exists(out / 'grid.png')
  trained = inference.load(str(workdir))
  assert isinstance(trained, inference.TrainedPrior) and trained.step == 4
  images = trained.sample(4, temperature=0.8, top_k=5, seed=1)
  assert images.shape == (4, 32, 32, 3) and 0 <= images.min() and images.max() <= 1
  from convae_jax import image_io  # pylint: disable=g-import-not-at-top
  written = image_io.load_images([str(out / 'sample_000.png')], channels=3)[0].pixels
  np.testing.assert_array_equal(written, np.round(images[0] * 255).astype(np.uint8))
  assert not np.array_equal(trained.sample_codes(4, seed=1), trained.sample_codes(4, seed=2))
  bits = trained.nll_bits(codes[:8])
  assert bits.shape == (8,) and np.all(bits > 0)


@pytest.mark.slow
def test_refusals_name_the_problem_and_write_nothing(vq_workdir, cae_workdir, photo_data_dir,
                                                     tmp_path):
  cases = {
      'no_codes': ({'autoencoder': cae_workdir}, 'has no discrete codes'),
      'grid': ({'image_size': 64}, 'code grid of 16x16'),
      'no_first_stage': ({'autoencoder': ''}, 'config.autoencoder is not set'),
      'filled_in': ({'model.num_codes': 16}, 'model.num_codes: set by the first stage'),
      'bad_setting': ({'model.depth': 0}, 'depth=0 must be'),
      'unknown_prior': ({'model.name': 'maskgit'}, "unknown model.name 'maskgit'"),
  }
  for case, (overrides, message) in cases.items():
    config = prior_config(vq_workdir, photo_data_dir)
    for key, value in overrides.items():
      parent, _, leaf = key.rpartition('.')
      (config[parent] if parent else config)[leaf] = value
    workdir = tmp_path / case
    with pytest.raises(errors.UserError, match=re.escape(message)):
      prior_train.train_and_evaluate(config, str(workdir))
    assert not os.path.exists(workdir) or not os.listdir(workdir), case
  # Through launch.py: the same refusal as one line and exit code 2.
  result = run_launch(launch_args(tmp_path / 'launched', cae_workdir, photo_data_dir))
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error:') and 'has no discrete codes' in last, last


@pytest.mark.slow
def test_a_workdir_keeps_the_codes_of_its_first_stage(vq_workdir, photo_data_dir, tmp_path):
  """A prior's workdir relaunched with another first stage is refused, its files intact."""
  workdir = tmp_path / 'prior'
  assert run_launch(launch_args(workdir, vq_workdir, photo_data_dir,
                                '--config.num_train_steps=2')).returncode == 0
  before = {name: os.path.getmtime(workdir / 'codes' / name)
            for name in os.listdir(workdir / 'codes')}
  result = run_launch(launch_args(workdir, 'pretrained:vqvae', photo_data_dir,
                                  '--config.dataset=photo_patches'))
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'holds the codes of another first stage' in result.stderr.strip().splitlines()[-1]
  assert before == {name: os.path.getmtime(workdir / 'codes' / name)
                    for name in os.listdir(workdir / 'codes')}
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2']


@pytest.fixture(scope='module')
def prior_workdir(vq_workdir, photo_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('prior'))
  prior_train.train_and_evaluate(prior_config(vq_workdir, photo_data_dir, num_train_steps=2),
                                 workdir)
  return workdir


def test_sample_refuses_bad_settings(prior_workdir, tmp_path):
  for flags, message in ((['--temperature', 0], 'temperature=0.0 must be positive'),
                         (['--top_k', 600], 'top_k=600 must lie in [0, 512]'),
                         (['--height', 64], 'leave out --height and --width')):
    code, _, stderr = run_cli('sample', '--workdir', prior_workdir, '--output',
                              tmp_path / 'out', *flags)
    assert code == 2 and message in stderr, stderr
    assert not os.path.exists(tmp_path / 'out')
  code, _, stderr = run_cli('reconstruct', '--workdir', prior_workdir, '--output',
                            tmp_path / 'r', os.path.join(REPO, 'docs', 'coffee.jpg'))
  assert code == 2 and 'is a prior over codes, which samples' in stderr, stderr


def test_the_prior_table_shows_the_runs_figures(prior_workdir, capsys):
  from tools import prior_table  # pylint: disable=g-import-not-at-top
  assert prior_table.main([f'tiny={prior_workdir}', '--below', '0.15']) == 0
  header, _, line = capsys.readouterr().out.strip().splitlines()
  assert header.startswith('| run | prior | first stage |')
  cells = dict(zip(prior_table.COLUMNS, [c.strip() for c in line.strip('|').split('|')]))
  lines = [json.loads(l) for l in open(os.path.join(prior_workdir, 'metrics.jsonl'),
                                       encoding='utf-8')]
  final = [l for l in lines if 'eval/bits_per_code' in l][-1]
  assert cells['bits/code'] == f'{final["eval/bits_per_code"]:.3f}'
  assert cells['prior'] == 'transformer' and cells['training'] == '2 steps'
  below = final['eval/below_marginal_entropy']
  assert cells['status'] == ('met' if below >= 0.15 else
                             f'missed by {100 * (0.15 - below):.1f} percentage points')


def test_bits_per_dim_adds_the_first_stages_reconstruction_term(photo_data_dir, tmp_path):
  """With a first stage whose likelihood is over pixels, eval/bpd is the VQ-VAE paper's
  figure: the prior's bits per image dimension plus the decoder's -log p(x | z) in bits/dim."""
  from configs import photos  # pylint: disable=g-import-not-at-top
  first_config = tiny(photos.get_config('vqvae'), data_dir=photo_data_dir, num_train_steps=2)
  first_config.model.likelihood = {'name': 'discretized_logistic'}
  first = str(tmp_path / 'first')
  train.train_and_evaluate(first_config, first)
  prior_train.train_and_evaluate(prior_config(first, photo_data_dir, num_train_steps=2),
                                 str(tmp_path / 'prior'))
  nll_bpd = inference.load(first).evaluate('test', data_dir=photo_data_dir)['nll_bpd']
  about = json.load(open(tmp_path / 'prior' / 'codes' / 'about.json', encoding='utf-8'))
  assert about['first_stage_eval_nll_bpd'] == pytest.approx(nll_bpd, rel=1e-6)
  lines = [json.loads(l) for l in open(tmp_path / 'prior' / 'metrics.jsonl', encoding='utf-8')]
  final = [l for l in lines if 'eval/bits_per_code' in l][-1]
  assert final['eval/bpd'] == pytest.approx(final['eval/prior_bpd'] + nll_bpd, rel=1e-6)
