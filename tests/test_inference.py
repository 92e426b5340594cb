"""Using a trained model: the Python API and `python -m convae_jax.cli`, on tiny checkpoints.

A cae is trained for two steps on photo_patches and a vae checkpoint saved at its
initialization (once per module); the inputs are generated images of several sizes and modes,
plus a corrupt and an empty file.
"""
import json
import os
import re
import shutil
import struct
import zlib

import jax
import numpy as np
import pytest
from PIL import Image

from configs import photos
from convae_jax import checkpointing, image_grid, image_io, inference, models, optimizer, steps
from convae_jax import workdir as workdir_lib

from conftest import REPO, run_cli, tiny

GOOD = {  # name: (height, width, what it exercises)
    'rgb': (32, 32, 'RGB PNG'),
    'odd': (37, 50, 'RGB PNG, sides not divisible by 4'),
    'gray': (64, 48, 'L PNG'),
    'rgba': (37, 50, 'RGBA PNG'),
    'deep': (32, 32, '16-bit grayscale PNG (I;16)'),
    'deep_rgb': (37, 50, '16-bit RGB PNG'),
    'photo': (64, 48, 'JPEG'),
}


def _smooth(height, width, channels, seed):
  """A reconstructable picture: coarse noise blown up and blurred, floats in [0, 1]."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(size=(height // 8 + 2, width // 8 + 2, channels))
  return np.asarray(coarse.repeat(8, 0).repeat(8, 1)[:height, :width], np.float64)


def _png16_rgb(path, pixels):
  """Writes uint16 [H, W, 3] as a 16-bit RGB PNG (Pillow cannot write those)."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
  h, w, _ = pixels.shape
  raw = b''.join(b'\x00' + row.astype('>u2').tobytes() for row in pixels)
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


@pytest.fixture(scope='module')
def images_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp('inputs')
  u8 = lambda x: (x * 255).round().astype(np.uint8)
  Image.fromarray(u8(_smooth(32, 32, 3, 0))).save(folder / 'rgb.png')
  Image.fromarray(u8(_smooth(37, 50, 3, 1))).save(folder / 'odd.png')
  Image.fromarray(u8(_smooth(64, 48, 1, 2))[..., 0], 'L').save(folder / 'gray.png')
  rgba = u8(np.concatenate([_smooth(37, 50, 3, 3), _smooth(37, 50, 1, 4)], -1))
  Image.fromarray(rgba, 'RGBA').save(folder / 'rgba.png')
  Image.fromarray((_smooth(32, 32, 1, 5)[..., 0] * 65535).astype(np.uint16)).save(
      folder / 'deep.png')
  _png16_rgb(folder / 'deep_rgb.png', (_smooth(37, 50, 3, 6) * 65535).astype(np.uint16))
  Image.fromarray(u8(_smooth(64, 48, 3, 7))).save(folder / 'photo.jpg', quality=90)
  with open(folder / 'photo.jpg', 'rb') as f:
    jpeg = f.read()
  with open(folder / 'corrupt.jpg', 'wb') as f:
    f.write(jpeg[:len(jpeg) // 3])  # Truncated mid-scan.
  (folder / 'empty.png').write_bytes(b'')
  (folder / 'notes.txt').write_text('not an image, and not .png/.jpg: ignored in folders')
  return str(folder)


def _initial_vae_workdir(workdir, config):
  """A VAE checkpoint at initialization, saved as the trainer saves (its loop is the cae's)."""
  model = models.create_model(config.model)
  state = steps.create_train_state(model, optimizer.create_optimizer(config), jax.random.key(0),
                                   (32, 32, 3))
  workdir_lib.save_config(config, workdir, 0)
  checkpointer = checkpointing.Checkpointer(workdir, config.max_to_keep)
  checkpointer.save(1, state)
  checkpointer.close()
  return workdir


@pytest.fixture(scope='module')
def vae_workdir(tmp_path_factory, photo_data_dir):
  return _initial_vae_workdir(str(tmp_path_factory.mktemp('vae')),
                              tiny(photos.get_config('vae'), data_dir=photo_data_dir))


@pytest.fixture(scope='module')
def cae(cae_workdir):
  return inference.load(cae_workdir)


@pytest.fixture(scope='module')
def reconstructed(cae_workdir, images_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp('recon')
  return (out,) + run_cli('reconstruct', '--workdir', cae_workdir, images_dir, '--output', out)


def _read(path):
  return np.asarray(Image.open(path))


def test_reconstructs_a_folder_at_original_sizes_and_skips_bad_files(reconstructed, images_dir,
                                                                     cae):
  out, code, stdout, stderr = reconstructed
  assert code == 0, stderr
  for name, (h, w, what) in GOOD.items():
    original = _read(out / f'{name}_original.png')
    recon = _read(out / f'{name}_reconstruction.png')
    assert original.shape == recon.shape == (h, w, 3), what
    assert name in stdout
  report = json.load(open(out / 'psnr.json'))
  assert sorted(r['name'] for r in report['images']) == sorted(GOOD)
  assert all(np.isfinite(r['psnr']) and r['psnr'] > 5 for r in report['images'])
  assert os.path.exists(out / 'grid.png')
  # The bad files: named once each, skipped; the rest finished.
  assert stderr.count('corrupt.jpg') == 1 and 'skipped' in stderr
  assert f'skipped {os.path.join(images_dir, "empty.png")}: empty file' in stderr
  assert 'notes' not in stderr + stdout
  # Each kind of conversion said once, with its count.
  lines = stderr.splitlines()
  for said in ('2 images reduced from 16 to 8 bits', '2 images grayscale, repeated to RGB',
               '1 image with transparency, composited on white'):
    assert sum(line.startswith(said) for line in lines) == 1, stderr
  # What was written is the API's reconstruction of what was read.
  odd = _read(out / 'odd_original.png').astype(np.float32) / 255
  np.testing.assert_array_equal(image_grid.to_uint8(cae.reconstruct(odd)),
                                _read(out / 'odd_reconstruction.png'))


def test_conversions(tmp_path):
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (10, 20, 30, 255)  # Opaque: kept; the rest transparent: white.
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'a.png')
  pixels, kinds = image_io.read_image(str(tmp_path / 'a.png'))
  assert kinds == ['alpha']
  np.testing.assert_array_equal(pixels[0, 0], [10, 20, 30])
  np.testing.assert_array_equal(pixels[1, 1], [255, 255, 255])
  deep = np.array([[0, 257 * 100], [65535, 257 * 7 + 100]], np.uint16)
  Image.fromarray(deep).save(tmp_path / 'd.png')
  pixels, kinds = image_io.read_image(str(tmp_path / 'd.png'))
  assert kinds == ['sixteen_bit', 'grayscale'] and pixels.shape == (2, 2, 3)
  np.testing.assert_array_equal(pixels[..., 0], [[0, 100], [255, 7]])
  np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
  gray, kinds = image_io.read_image(str(tmp_path / 'd.png'), channels=1)
  assert gray.shape == (2, 2, 1)


def test_encode_then_decode_gives_the_reconstructions(reconstructed, cae_workdir, images_dir,
                                                       tmp_path, cae):
  recon_dir = reconstructed[0]
  code, stdout, stderr = run_cli('encode', '--workdir', cae_workdir, images_dir,
                                 '--output', tmp_path / 'z.npz')
  assert code == 0, stderr
  with np.load(tmp_path / 'z.npz') as z:
    assert sorted(z['names']) == sorted(GOOD)
    assert z[f'latent_{list(z["names"]).index("odd")}'].shape == (10, 13, 32)  # 40x52 / 4.
  code, stdout, stderr = run_cli('decode', '--workdir', cae_workdir, '--latents',
                                 tmp_path / 'z.npz', '--output', tmp_path / 'decoded')
  assert code == 0, stderr
  for name in GOOD:
    np.testing.assert_array_equal(_read(tmp_path / 'decoded' / f'{name}.png'),
                                  _read(recon_dir / f'{name}_reconstruction.png'))
  # Decoding next to the encoded originals would overwrite them (NAME.png): refused.
  code, _, stderr = run_cli('decode', '--workdir', cae_workdir, '--latents',
                            tmp_path / 'z.npz', '--output', images_dir)
  assert code == 2 and 'folder of input' in stderr
  # The API: decode(encode(x)) is reconstruct(x), bitwise, at any size.
  x = _smooth(37, 50, 3, 9).astype(np.float32)[None].repeat(2, 0)
  recon = cae.reconstruct(x)
  assert recon.shape == x.shape and 0 <= recon.min() and recon.max() <= 1
  np.testing.assert_array_equal(cae.decode(cae.encode(x), size=(37, 50)), recon)
  np.testing.assert_array_equal(cae.reconstruct(x[0]), recon[0])
  np.testing.assert_array_equal(cae.reconstruct(image_grid.to_uint8(x)),
                                cae.reconstruct(image_grid.to_uint8(x).astype(np.float32) / 255))


def test_sides_that_divide_need_no_padding(cae):
  x = _smooth(32, 48, 3, 10).astype(np.float32)[None]
  direct = cae.model.apply(cae.variables, x).reconstruction
  np.testing.assert_allclose(cae.reconstruct(x), np.asarray(direct), atol=1e-6)


def test_evaluate_prints_and_writes_the_metrics(cae_workdir, tmp_path):
  code, stdout, stderr = run_cli('evaluate', '--workdir', cae_workdir,
                                 '--output', tmp_path / 'eval.json')
  assert code == 0, stderr
  result = json.load(open(tmp_path / 'eval.json'))
  assert result['step'] == 2 and result['split'] == 'test' and result['num_images'] == 476
  for name in ('mse', 'psnr', 'ssim', 'lpips', 'loss_mse'):
    assert np.isfinite(result['metrics'][name]) and name in stdout
  # The trainer's evaluation of the same checkpoint.
  lines = [json.loads(l) for l in open(os.path.join(cae_workdir, 'metrics.jsonl'))]
  trained = [l for l in lines if 'eval/psnr' in l][-1]
  for name in ('mse', 'psnr', 'ssim', 'lpips'):
    np.testing.assert_allclose(result['metrics'][name], trained[f'eval/{name}'], rtol=1e-5)


def test_vae_samples_and_interpolates(vae_workdir, images_dir, tmp_path):
  vae = inference.load(vae_workdir)
  samples = vae.sample(3, seed=1)
  assert samples.shape == (3, 32, 32, 3) and 0 <= samples.min() and samples.max() <= 1
  np.testing.assert_array_equal(samples, vae.sample(3, seed=1))
  assert vae.sample(2, seed=0, height=16, width=24).shape == (2, 16, 24, 3)
  a, b = _smooth(37, 50, 3, 11), _smooth(37, 50, 3, 12)
  path = vae.interpolate(a, b, steps=5)
  assert path.shape == (5, 37, 50, 3)
  np.testing.assert_allclose(path[0], vae.reconstruct(a.astype(np.float32)), atol=1e-5)
  np.testing.assert_allclose(path[-1], vae.reconstruct(b.astype(np.float32)), atol=1e-5)

  code, _, stderr = run_cli('sample', '--workdir', vae_workdir, '--num', 4,
                            '--output', tmp_path / 's')
  assert code == 0, stderr
  assert sorted(os.listdir(tmp_path / 's')) == ['grid.png'] + [f'sample_00{i}.png'
                                                                 for i in range(4)]
  code, _, stderr = run_cli('interpolate', '--workdir', vae_workdir, '--steps', 4,
                            os.path.join(images_dir, 'odd.png'),
                            os.path.join(images_dir, 'rgba.png'), '--output', tmp_path / 'i')
  assert code == 0, stderr
  assert _read(tmp_path / 'i' / 'interpolation_03.png').shape == (37, 50, 3)
  assert len(os.listdir(tmp_path / 'i')) == 5


def test_a_learned_prior_samples_at_the_training_size_only(photo_data_dir, tmp_path):
  config = tiny(photos.get_config('vae'), data_dir=photo_data_dir)
  config.model.bottleneck.prior = 'low_rank'
  workdir = _initial_vae_workdir(str(tmp_path), config)
  assert inference.load(workdir).sample(2, seed=0).shape == (2, 32, 32, 3)
  code, _, stderr = run_cli('sample', '--workdir', workdir, '--num', 2, '--height', 16,
                            '--output', tmp_path / 'samples')
  assert code == 2 and stderr.strip() == (
      "error: sample: this model's prior was learned on the latent grid of 32x32 images; "
      'sample at that size (leave out --height and --width)')
  assert not os.path.exists(tmp_path / 'samples')


def test_the_importance_weighted_bound_is_tighter_than_the_elbo(vae_workdir, cae, tmp_path):
  vae = inference.load(vae_workdir)
  code, stdout, stderr = run_cli('evaluate', '--workdir', vae_workdir, '--split', 'test[:32]',
                                 '--batch_size', 16, '--importance_samples', 16,
                                 '--output', tmp_path / 'eval.json')
  assert code == 0, stderr
  result = json.load(open(tmp_path / 'eval.json'))['metrics']
  assert result['importance_samples'] == 16 and 'bpd_iw' in stdout
  one_draw = vae.evaluate('test[:32]', batch_size=16)
  np.testing.assert_allclose(result['bpd'], one_draw['bpd'], rtol=1e-6)
  assert np.isfinite(result['bpd_iw']) and result['bpd_iw'] < one_draw['bpd']
  # The log weights average to minus the negative ELBO (its KL in closed form).
  images = np.round(_smooth(32, 32, 3, 0)[None] * 255.0) / 255.0
  variables = {'params': vae.state.params, **vae.state.model_state}
  # Over the same draws (the same keys draw the same latents), so only the KL's Monte Carlo
  # estimate differs from its closed form.
  keys = jax.random.split(jax.random.key(0), 512)
  log_weights = jax.vmap(lambda key: vae.model.apply(
      variables, images, rngs={'sample': key}, method='log_importance_weight'))(keys)
  nelbo = jax.vmap(lambda key: vae.model.apply(
      variables, images, rngs={'sample': key}).metrics['nelbo'])(keys)
  np.testing.assert_allclose(-np.mean(log_weights), np.mean(nelbo), rtol=1e-3)
  with pytest.raises(inference.UsageError,
                     match=r"importance_samples: model 'seed\+identity\+mse' has no prior"):
    cae.evaluate('test[:8]', importance_samples=4)
  with pytest.raises(inference.UsageError, match='importance_samples=-1: must be 0'):
    vae.evaluate('test[:8]', importance_samples=-1)


def test_a_model_that_cannot_sample_says_so(cae, cae_workdir, tmp_path):
  with pytest.raises(inference.UsageError, match=r"model 'seed\+identity\+mse' cannot sample.*can_sample is False"):
    cae.sample(2)
  code, _, stderr = run_cli('sample', '--workdir', cae_workdir, '--output', tmp_path / 'samples')
  assert code == 2 and stderr.startswith("error: model 'seed+identity+mse' cannot sample")
  assert len(stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / 'samples')


def test_an_output_folder_of_the_inputs_is_refused(cae_workdir, images_dir):
  before = sorted(os.listdir(images_dir))
  for output in (images_dir, os.path.join(images_dir, 'out')):
    code, _, stderr = run_cli('reconstruct', '--workdir', cae_workdir, images_dir,
                              '--output', output)
    assert code == 2 and 'folder of input' in stderr and stderr.startswith('error: --output')
  code, _, stderr = run_cli('reconstruct', '--workdir', cae_workdir,
                            os.path.join(images_dir, 'rgb.png'), '--output', images_dir)
  assert code == 2 and 'folder of input' in stderr
  assert sorted(os.listdir(images_dir)) == before


def test_missing_workdir_checkpoint_or_step(cae_workdir, tmp_path, images_dir):
  with pytest.raises(inference.UsageError, match='does not exist; pass the --workdir'):
    inference.load(str(tmp_path / 'nope'))
  with pytest.raises(inference.UsageError, match='has no checkpoint in .*; train first'):
    inference.load(str(tmp_path))
  with pytest.raises(inference.UsageError,
                     match='has no checkpoint at step 7; available steps: 2'):
    inference.load(cae_workdir, step=7)
  code, _, stderr = run_cli('reconstruct', '--workdir', cae_workdir, '--step', 7, images_dir,
                            '--output', tmp_path / 'out')
  assert code == 2 and stderr.startswith('error: ') and len(stderr.splitlines()) == 1
  assert 'available steps: 2' in stderr


def test_a_workdir_of_an_unknown_model_is_refused_and_kept(cae_workdir, tmp_path):
  # config.json of a model this process has not registered (or an older version's name).
  old = tmp_path / 'old'
  shutil.copytree(cae_workdir, old)
  config = json.loads((old / 'config.json').read_text())
  config['model'] = {'name': 'cae', 'features': [16, 32]}
  (old / 'config.json').write_text(json.dumps(config))
  before = sorted((p, p.stat().st_mtime) for p in old.rglob('*'))
  code, _, stderr = run_cli('evaluate', '--workdir', old)
  assert code == 2 and len(stderr.splitlines()) == 1
  assert re.search(r"error: .*config.json: config.model: unknown model.name 'cae'; known: "
                   r"autoencoder.* the CLI takes --module NAME", stderr), stderr
  assert sorted((p, p.stat().st_mtime) for p in old.rglob('*')) == before


def test_nothing_readable_is_refused(cae_workdir, images_dir, tmp_path):
  code, stdout, stderr = run_cli('reconstruct', '--workdir', cae_workdir,
                                 os.path.join(images_dir, 'empty.png'),
                                 os.path.join(images_dir, 'corrupt.jpg'), '--output',
                                 tmp_path / 'out')
  assert code == 2 and stdout == ''
  assert 'empty.png: empty file' in stderr and 'corrupt.jpg: cannot be read' in stderr
  assert stderr.splitlines()[-1].startswith('error: no readable image')
  assert not (tmp_path / 'out').exists()
  code, _, stderr = run_cli('nope')
  assert code == 2 and stderr.startswith('error: argument MODE')


def test_a_missing_input_is_refused_before_anything_is_written(cae_workdir, images_dir,
                                                               tmp_path):
  missing = tmp_path / 'missing.png'
  good = os.path.join(images_dir, 'rgb.png')
  for argv in (['reconstruct', good, missing, '--output', tmp_path / 'out'],
               ['encode', missing, good, '--output', tmp_path / 'z.npz'],
               ['interpolate', good, missing, '--output', tmp_path / 'out']):
    code, stdout, stderr = run_cli(argv[0], '--workdir', cae_workdir, *argv[1:])
    assert code == 2 and stdout == ''
    assert stderr.splitlines() == [f'error: {missing}: no such file or folder; pass PNG or JPEG '
                                   'files or folders holding them'], stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_the_python_api_refuses_what_the_cli_refuses(images_dir, tmp_path):
  missing = str(tmp_path / 'photo.jpg')
  with pytest.raises(image_io.ImageInputError, match=f'^{re.escape(missing)}: no such file'):
    image_io.load_images([missing, images_dir])
  with pytest.raises(image_io.ImageInputError, match='^no readable image in .*corrupt.jpg '
                     r'\(.*corrupt.jpg: cannot be read'):
    image_io.load_images([os.path.join(images_dir, 'corrupt.jpg')], say=lambda _: None)
  (tmp_path / 'notes').mkdir()
  with pytest.raises(image_io.ImageInputError, match='^no readable image in .*notes;'):
    image_io.load_images([str(tmp_path / 'notes')], say=lambda _: None)
  with pytest.raises(image_io.ImageInputError, match='pass a list'):
    image_io.load_images(os.path.join(images_dir, 'rgb.png'))
  # A UserError (the CLI's one-line refusal) and a ValueError (what Python code catches).
  assert issubclass(image_io.ImageInputError, ValueError)


def test_lists_of_images_of_any_size_are_done_each_at_its_size(cae, images_dir):
  photos = image_io.load_images([images_dir])
  recons = cae.reconstruct(photos)
  assert [r.shape for r in recons] == [p.pixels.shape for p in photos]
  for photo, recon in zip(photos, recons):
    np.testing.assert_array_equal(recon, cae.reconstruct(photo.pixels))
  latents = cae.encode([p.pixels for p in photos])
  assert len(latents) == len(photos) and all(z.ndim == 3 for z in latents)
  ragged = [photos[0].pixels, np.zeros((9, 7, 3), np.uint8)]
  with pytest.raises(inference.UsageError, match='different sizes in one array; pass a list'):
    cae.reconstruct(np.array(ragged, dtype=object))
  with pytest.raises(inference.UsageError, match=r'images\[0\] has shape \(2, 32, 32, 3\)'):
    cae.reconstruct([np.zeros((2, 32, 32, 3))])


def test_a_loaded_model_prints_in_one_line(cae, cae_workdir):
  text = repr(cae)
  assert text == (f"TrainedModel(model='seed+identity+mse', step=2, weights='raw', "
                  f"workdir={cae_workdir!r})")


def test_the_readme_python_snippet_runs_as_written(cae_workdir, tmp_path, monkeypatch, capsys):
  """The README's snippet, exactly as written, in a folder laid out as after its quick start:
  workdirs/photos (here the tiny cae, trained on photo_patches as the quick start's is) and
  the repository's docs/ (its photograph)."""
  readme = open(os.path.join(REPO, 'README.md'), encoding='utf-8').read()
  section = readme.split('## Use a trained model')[1].split('\n## ')[0]
  snippet = section.split('```python\n')[1].split('```')[0]
  os.makedirs(tmp_path / 'workdirs')
  os.symlink(cae_workdir, tmp_path / 'workdirs' / 'photos')
  os.symlink(os.path.join(REPO, 'docs'), tmp_path / 'docs')
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(snippet, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  # What its comments say it gives (the step and workdir are the quick start's).
  said = re.search(r'print\(model\) +# (.*)', snippet).group(1)
  pattern = re.escape(said).replace('737', r'\d+').replace(re.escape('...'), '.*')
  assert re.fullmatch(pattern, capsys.readouterr().out.strip())
  assert [r.shape for r in namespace['recons']] == [(400, 600, 3)]
  assert namespace['recon'].shape == (2, 200, 300, 3) and namespace['recon'].dtype == np.float32
  assert namespace['latents'].shape == (2, 50, 75, 32)
  np.testing.assert_array_equal(namespace['same'], namespace['recon'])
  assert namespace['metrics']['num_images'] == 476


def test_grids_keep_originals_apart_and_show_full_resolution():
  originals = np.zeros((2, 4, 4, 3), np.float32)
  grid = image_grid.side_by_side_grid(originals, originals, columns=2)
  border = 2
  assert grid.shape == (border + 4 + 1 + 4 + border, border + 2 * (4 + border), 3)
  assert (grid[border + 4] == 255).all()  # The white row between original and reconstruction.
  large = np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8)
  view = image_io.full_view(large, cell=256)
  np.testing.assert_array_equal(view, large[22:278, 72:328])  # A centre crop, pixel for pixel.
  small = np.arange(16 * 8 * 3).reshape(16, 8, 3).astype(np.uint8)
  assert (image_io.full_view(small, cell=64) == small.repeat(4, 0).repeat(4, 1)).all()


def test_using_a_trained_model_starts_no_tensorflow():
  """inference and the CLI import TensorFlow only to read a TFDS split (evaluate)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys\n'
          'import convae_jax.inference, convae_jax.cli, convae_jax.steps\n'
          'loaded = [m for m in ("tensorflow", "tensorflow_datasets") if m in sys.modules]\n'
          'assert not loaded, loaded\n')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120,
                 env=dict(os.environ, JAX_PLATFORMS='cpu'))
