"""The same test images reconstructed by several trained models, one row each, under the originals.

    python tools/compare_reconstructions.py --data_dir /tmp/tfds --output docs/vqgan_vs_vqvae.png \
        "vqvae-resnet, 8 epochs=/tmp/runs/vqvae8" vqgan-resnet=pretrained:vqgan-resnet

Each MODEL is LABEL=WORKDIR or LABEL=pretrained:NAME. Takes the first --num images of the
split (or --start onwards), so every model reconstructs the same ones. Writes the PNG (row 1
the originals, then one row per model in the order given, each pixel --scale times) and,
beside it, OUTPUT.json: the images' indices and each model's mean PSNR and LPIPS-AlexNet on
them, which a caption quotes.
"""
import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from convae_jax import errors, image_grid, inference, input_pipeline, metrics, perceptual


def parse_model(spec: str) -> tuple[str, str]:
  label, sep, source = spec.partition('=')
  if not sep or not label or not source:
    raise errors.UserError(f'{spec!r}: give each model as LABEL=WORKDIR or '
                           'LABEL=pretrained:NAME')
  return label, source


def compare(models: list[tuple[str, str]], dataset: str, split: str, data_dir: str | None,
            start: int, num: int) -> tuple[np.ndarray, list[np.ndarray], dict]:
  """(originals, each model's reconstructions, figures) of images [start, start + num)."""
  images = input_pipeline.load_split(dataset, split, data_dir).images[start:start + num]
  originals = images.astype(np.float32) / 255.0
  lpips_weights = perceptual.weights(perceptual.EVAL_NETWORK)
  rows, figures = [], {'dataset': dataset, 'split': split,
                       'indices': [start, start + len(images)], 'models': {}}
  for label, source in models:
    model = inference.load(source)
    reconstructions = model.reconstruct(images)
    values = metrics.image_metrics(reconstructions, originals, (0.0, 1.0),
                                   lpips_weights if perceptual.measurable(images.shape[-1])
                                   else None)
    figures['models'][label] = {'source': source, **{
        name: float(np.mean(values[name])) for name in ('psnr', 'lpips') if name in values}}
    rows.append(reconstructions)
  return originals, rows, figures


def picture(originals: np.ndarray, rows: list[np.ndarray], scale: int) -> np.ndarray:
  """uint8 grid: one row of originals, then one row per model, each pixel `scale` times."""
  stacked = np.concatenate([originals] + rows)
  grid = image_grid.tile(stacked, columns=len(originals))
  return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('models', nargs='+', help='LABEL=WORKDIR or LABEL=pretrained:NAME')
  parser.add_argument('--output', required=True, help='the PNG to write')
  parser.add_argument('--dataset', default='cifar10')
  parser.add_argument('--split', default='test')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--start', type=int, default=0)
  parser.add_argument('--num', type=int, default=12)
  parser.add_argument('--scale', type=int, default=3)
  args = parser.parse_args(argv)
  try:
    if args.num < 1 or args.start < 0 or args.scale < 1:
      raise errors.UserError('--num and --scale must be 1 or more, --start 0 or more')
    models = [parse_model(spec) for spec in args.models]
    originals, rows, figures = compare(models, args.dataset, args.split, args.data_dir,
                                       args.start, args.num)
  except errors.UserError as e:
    return errors.report(e)
  image_grid.save_png(picture(originals, rows, args.scale), args.output)
  with open(os.path.splitext(args.output)[0] + '.json', 'w', encoding='utf-8') as f:
    json.dump(figures, f, indent=1)
  for label, values in figures['models'].items():
    print(label, ' '.join(f'{k}={v:.4f}' for k, v in values.items() if k != 'source'))
  return 0


if __name__ == '__main__':
  sys.exit(main())
