"""tools/compare_reconstructions.py: the same test images through several models, one row each."""
import json

import numpy as np
from PIL import Image

from convae_jax import inference, input_pipeline, metrics
from tools import compare_reconstructions


def test_rows_are_the_originals_then_each_models_reconstructions(cae_workdir, photo_data_dir,
                                                                 tmp_path, capsys):
  output = tmp_path / 'compare.png'
  code = compare_reconstructions.main([
      f'trained here={cae_workdir}', 'shipped cae=pretrained:cae', '--dataset', 'photo_patches',
      '--data_dir', photo_data_dir, '--start', '3', '--num', '5', '--scale', '2',
      '--output', str(output)])
  assert code == 0
  grid = np.asarray(Image.open(output))
  # 3 rows (originals, two models) and 5 columns of 32x32 cells, 2-pixel borders, doubled.
  assert grid.shape == (2 * (3 * 34 + 2), 2 * (5 * 34 + 2), 3)
  images = input_pipeline.load_split('photo_patches', 'test', photo_data_dir).images[3:8]
  cell = lambda row, column: grid[2 * (2 + 34 * row):2 * (34 + 34 * row):2,
                                  2 * (2 + 34 * column):2 * (34 + 34 * column):2]
  np.testing.assert_array_equal(cell(0, 4), images[4])
  trained = inference.load(cae_workdir).reconstruct(images)
  np.testing.assert_array_equal(cell(1, 0), np.asarray(
      (np.clip(trained[0], 0, 1) * 255 + 0.5).astype(np.uint8)))
  figures = json.load(open(tmp_path / 'compare.json'))
  assert figures['indices'] == [3, 8] and list(figures['models']) == ['trained here',
                                                                      'shipped cae']
  expected = metrics.image_metrics(trained, images / 255.0, (0.0, 1.0))
  np.testing.assert_allclose(figures['models']['trained here']['psnr'],
                             np.mean(expected['psnr']), rtol=1e-5)
  assert 0 < figures['models']['shipped cae']['lpips'] < 1
  assert 'trained here psnr=' in capsys.readouterr().out


def test_a_model_without_a_label_is_refused(tmp_path, capsys):
  assert compare_reconstructions.main(['pretrained:cae', '--output', str(tmp_path / 'x.png')]) == 2
  assert "give each model as LABEL=WORKDIR" in capsys.readouterr().err
  assert not (tmp_path / 'x.png').exists()
