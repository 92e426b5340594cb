"""Shipped weights (convae_jax/pretrained): each loads, reproduces its manifest's figures and
refuses a changed file; config.init_from starts a run from them or from another run."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar, photos
from convae_jax import config_checks, inference, input_pipeline, pretrained, train

from conftest import REPO, run_cli, tiny
from tools import pretrained as pretrained_tool

SHIPPED = pretrained.names()
PHOTO = os.path.join(REPO, 'docs', 'coffee.jpg')
MAX_BYTES = 15 * 2**20  # All of them together.


def test_shipped_presets_are_presets_with_complete_manifests():
  assert SHIPPED, 'no pretrained weights are shipped'
  total = 0
  for name in SHIPPED:
    manifest = pretrained.manifest(name)
    assert name in cifar.PRESETS
    assert manifest['test_images'] == 10_000 and 'JPEG copy' in manifest['data']
    preset = json.loads(cifar.get_config(name).to_json_best_effort())
    assert manifest['config']['model'] == preset['model']  # The preset at its defaults.
    assert manifest['config']['num_epochs'] == preset['num_epochs']
    for key in ('steps', 'training_seconds', 'machine', 'command', 'sha256', 'test_metrics',
                'photo_patches_test'):
      assert manifest[key] is not None, (name, key)
    total += os.path.getsize(os.path.join(pretrained.DIRECTORY, f'{name}.msgpack'))
  assert total <= MAX_BYTES


@pytest.mark.parametrize('name', SHIPPED)
def test_a_shipped_preset_reproduces_its_figures(name, photo_data_dir):
  # Bitwise on the machine kind that recorded them, within 1e-5 elsewhere.
  recorded = pretrained.manifest(name)['photo_patches_test']
  model = inference.load(pretrained.PREFIX + name)
  metrics = model.evaluate('test', dataset='photo_patches', data_dir=photo_data_dir,
                           batch_size=recorded['batch_size'])
  same_kind = recorded['machine'] == pretrained.machine_kind()
  for key, value in recorded['metrics'].items():
    if same_kind:
      assert metrics[key] == value, key
    elif key in ('codes_used', 'code_perplexity'):  # Counts: one code may land otherwise.
      np.testing.assert_allclose(metrics[key], value, rtol=0.01, err_msg=key)
    else:
      np.testing.assert_allclose(metrics[key], value, rtol=1e-5, err_msg=key)


def test_reconstruct_and_list_from_the_command_line(tmp_path):
  name = SHIPPED[0]
  code, stdout, stderr = run_cli('reconstruct', '--pretrained', name, PHOTO,
                                 '--output', tmp_path / 'out')
  assert code == 0, stderr
  assert 'mean over' in stdout and os.path.exists(tmp_path / 'out' / 'grid.png')
  code, stdout, _ = run_cli('pretrained')
  assert code == 0
  listed = [line.split()[0] for line in stdout.splitlines()[1:-1]]
  assert listed == SHIPPED
  assert pretrained.manifest(name)['test_summary'] in stdout


def test_the_docs_table_is_the_generated_one():
  generated = pretrained_tool.table()
  with open(os.path.join(REPO, 'docs', 'pretrained.md'), encoding='utf-8') as f:
    assert generated in f.read(), 'rerun: python tools/pretrained.py --table'
  assert len(generated.splitlines()) == 2 + len(SHIPPED)
  # A preset with loss terms names them, as the results tables do.
  assert '| `vqgan-resnet` | resnet+vq+mse+adversarial+lpips |' in generated


@pytest.fixture
def copied_weights(tmp_path, monkeypatch):
  """The shipped folder's files, copied where a test may change them."""
  folder = tmp_path / 'weights'
  shutil.copytree(pretrained.DIRECTORY, folder, ignore=shutil.ignore_patterns('*.py', '__*'))
  monkeypatch.setattr(pretrained, 'DIRECTORY', str(folder))
  return folder


def test_a_changed_weights_file_is_refused_in_one_line(copied_weights, tmp_path):
  name = SHIPPED[0]
  path = copied_weights / f'{name}.msgpack'
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 1
  path.write_bytes(bytes(data))
  code, _, stderr = run_cli('reconstruct', '--pretrained', name, PHOTO,
                            '--output', tmp_path / 'out')
  assert code == 2 and len(stderr.strip().splitlines()) == 1
  assert f'{name}.msgpack does not match the sha256 in {name}.json' in stderr
  assert not os.path.exists(tmp_path / 'out')
  path.unlink()
  with pytest.raises(pretrained.PretrainedError, match='cannot be read'):
    inference.load(pretrained.PREFIX + name)


def test_an_unknown_name_is_refused_in_one_line():
  code, _, stderr = run_cli('evaluate', '--pretrained', 'nope')
  assert code == 2 and len(stderr.strip().splitlines()) == 1
  assert f"no pretrained model 'nope'; shipped: {', '.join(SHIPPED)}" in stderr


def _first_batch(config, data_dir):
  split = input_pipeline.load_split(config.dataset, config.train_split, data_dir)
  batch = next(input_pipeline.train_batches(split, global_batch_size=config.batch_size,
                                            seed=config.seed, start_step=0,
                                            num_local_devices=1))
  return batch.reshape((-1,) + batch.shape[2:]).astype(np.float32) / 255.0


def _train_lines(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))
          if 'train/loss' in line]


@pytest.mark.parametrize('source', ['workdir', 'pretrained'])
def test_init_from_starts_from_the_weights_it_names(source, cae_workdir, photo_data_dir,
                                                    tmp_path):
  init_from = cae_workdir if source == 'workdir' else pretrained.PREFIX + 'cae'
  config = tiny(photos.get_config('cae'), data_dir=photo_data_dir, num_train_steps=1,
                log_every_steps=1, init_from=init_from)
  state = train.train_and_evaluate(config, str(tmp_path / 'run'))
  source = inference.load(init_from)
  # The first step's loss is the loaded model's on the first batch.
  images = _first_batch(config, photo_data_dir)
  expected = float(np.mean(source.model.apply(source.variables, images).losses['mse']))
  np.testing.assert_allclose(_train_lines(tmp_path / 'run')[0]['train/loss'], expected,
                             rtol=1e-5)
  assert int(state.step) == 1 and int(state.opt_state[0].count) == 1  # A fresh optimizer.


def test_init_from_is_not_applied_again_when_a_run_resumes(cae_workdir, photo_data_dir,
                                                          tmp_path):
  straight = tiny(photos.get_config('cae'), data_dir=photo_data_dir, num_train_steps=4,
                  checkpoint_every_steps=2, init_from=cae_workdir)
  expected = train.train_and_evaluate(straight, str(tmp_path / 'straight'))
  first = tiny(photos.get_config('cae'), data_dir=photo_data_dir, num_train_steps=2,
               init_from=cae_workdir)
  train.train_and_evaluate(first, str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(straight, str(tmp_path / 'resumed'))
  jax.tree.map(np.testing.assert_array_equal, resumed.params, expected.params)


@pytest.mark.parametrize('init_from,message', [
    ('pretrained:nope', r"config.init_from='pretrained:nope': no pretrained model 'nope'"),
    ('/no/such/run', r"config.init_from='/no/such/run': workdir /no/such/run does not exist"),
])
def test_init_from_refusals(cifar_config, tmp_path, init_from, message):
  with tfds.testing.mock_data(num_examples=16):
    with pytest.raises(config_checks.ConfigError, match=message):
      train.train_and_evaluate(cifar_config(init_from=init_from), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_init_from_weights_of_another_model_names_the_first_difference(cae_workdir,
                                                                        cifar_config, tmp_path):
  config = cifar_config(init_from=cae_workdir)
  config.model = cifar.model('resae')
  with tfds.testing.mock_data(num_examples=16):
    with pytest.raises(config_checks.ConfigError,
                       match=r"its weights do not fit config.model \(params: \['decoder'\]"):
      train.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)
