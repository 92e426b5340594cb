"""The command line: `convae MODE ...` (installed) or `python -m convae_jax.cli MODE ...`.

  train        trains: launch.py's flags (convae train --config configs/cifar.py --workdir W)
  pretrained   lists the trained presets shipped in the package, with their test figures

The other modes use a trained model: --pretrained NAME (shipped weights), or --workdir W
(its newest checkpoint, or --step N; with its EMA weights when trained with
config.ema_decay > 0, or --weights raw):
  evaluate     metrics of a TFDS split (mse, psnr, ssim, lpips, the model's own): a table and a JSON
               (--output, default WORKDIR/evaluation_SPLIT_STEP.json; _raw.json for --weights
               raw; evaluation_NAME_SPLIT.json here for --pretrained NAME)
  reconstruct  PNG/JPEG files or folders of any size -> --output DIR: NAME_original.png,
               NAME_reconstruction.png, grid.png (originals beside reconstructions), psnr.json;
               prints each image's PSNR
  encode       images -> --output FILE.npz: names, sizes and one latent per image
  decode       --latents FILE.npz -> --output DIR/NAME.png (the same images reconstruct writes)
  sample       --num images from the prior -> --output DIR (models that can sample: the VAE;
               a prior over codes, configs/cifar_prior.py, with --temperature and --top_k)
  interpolate  two images of the same size, --steps images between them -> --output DIR

An unreadable or empty image file is named and skipped; the rest go on. An input that does not
exist, inputs with no readable image, and an output folder that is (or is inside) a folder of
the inputs are refused before anything is written, so no input is ever overwritten.
Exit codes: 0 done (skipped files are named on stderr); 2 refused: one line `error: ...`.
"""
import argparse
import importlib
import json
import os
import re
import sys

import numpy as np

from convae_jax import errors, image_grid, image_io, inference, logs, pretrained

logs.quiet_tensorflow()  # TensorFlow starts only to read a TFDS split (evaluate).

MAX_GRID_PAIRS = 64


def build_parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  which = common.add_mutually_exclusive_group(required=True)
  which.add_argument('--workdir', help='The training run\'s workdir.')
  which.add_argument('--pretrained', metavar='NAME',
                     help='A trained preset shipped in the package (convae pretrained).')
  common.add_argument('--step', type=int, default=None,
                      help='Checkpoint step to load (default: the newest).')
  common.add_argument('--weights', choices=inference.WEIGHTS, default='ema',
                      help='ema (default): a run trained with config.ema_decay > 0 is used with '
                      'its EMA weights, what its eval/ metrics are of; raw: its raw weights.')
  common.add_argument('--module', action='append', default=[],
                      help='A module to import first, e.g. one that registers your own variant '
                           '(repeatable).')
  inputs = argparse.ArgumentParser(add_help=False)
  inputs.add_argument('inputs', nargs='+', help='PNG/JPEG files and folders of them.')
  inputs.add_argument('--recursive', action='store_true', help='Also read subfolders.')

  parser = errors.ArgumentParser(prog=_prog(), description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  modes = parser.add_subparsers(dest='mode', required=True, metavar='MODE')
  modes.add_parser('train', add_help=False,
                   help='Train (launch.py\'s flags: see train --help).')
  modes.add_parser('pretrained', help='List the trained presets shipped in the package.')
  p = modes.add_parser('evaluate', parents=[common], help='Metrics on a TFDS split.')
  p.add_argument('--split', default=None, help='TFDS split (default: config.eval_split).')
  p.add_argument('--dataset', default=None, help='TFDS name (default: config.dataset).')
  p.add_argument('--data_dir', default=None, help='TFDS data dir (default: config.data_dir).')
  p.add_argument('--batch_size', type=int, default=None,
                 help='Eval batch (default: config.eval_batch_size).')
  p.add_argument('--importance_samples', type=int, default=0,
                 help='K > 0: also bpd_iw, the importance-weighted bound with K posterior '
                 'draws per image (models with a prior: the vae presets).')
  p.add_argument('--output', default=None,
                 help='JSON file (default: WORKDIR/evaluation_SPLIT_STEP.json).')
  p = modes.add_parser('reconstruct', parents=[common, inputs], help='Reconstruct images.')
  p.add_argument('--output', required=True, help='Folder for the outputs.')
  p = modes.add_parser('encode', parents=[common, inputs], help='Images -> latents (.npz).')
  p.add_argument('--output', required=True, help='The .npz file to write.')
  p = modes.add_parser('decode', parents=[common], help='Latents (.npz) -> images.')
  p.add_argument('--latents', required=True, help='An .npz written by encode.')
  p.add_argument('--output', required=True, help='Folder for the images.')
  p = modes.add_parser('sample', parents=[common],
                       help='Images from the prior (a VAE, or a prior run over codes).')
  p.add_argument('--num', type=int, default=16)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--height', type=int, default=None, help='Default: the training size.')
  p.add_argument('--width', type=int, default=None, help='Default: the training size.')
  p.add_argument('--temperature', type=float, default=None,
                 help='A prior over codes: its logits are divided by this (default 1).')
  p.add_argument('--top_k', type=int, default=None,
                 help='A prior over codes: each code drawn from the K likeliest (default 0: '
                 'all).')
  p.add_argument('--output', required=True, help='Folder for the samples.')
  p = modes.add_parser('interpolate', parents=[common], help='Between two images (VAE).')
  p.add_argument('inputs', nargs=2, metavar='IMAGE', help='Two images of the same size.')
  p.add_argument('--steps', type=int, default=8)
  p.add_argument('--output', required=True, help='Folder for the images.')
  return parser


def _prog() -> str:
  """How the user called this: `convae` (the installed command) or the module."""
  return 'convae' if os.path.basename(sys.argv[0]) == 'convae' else 'python -m convae_jax.cli'


def _note(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _psnr(reconstruction: np.ndarray, original: np.ndarray) -> tuple[float, float]:
  """(mse, psnr) on [0, 1] pixels: the definitions of eval/mse and eval/psnr."""
  mse = float(np.mean(np.square(reconstruction.astype(np.float64) - original)))
  return mse, float(-10.0 * np.log10(max(mse, 1e-10)))


def _write_json(path: str, value) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2)
    f.write('\n')


def _output_dir(path: str, inputs) -> str:
  image_io.check_output_dir(path, inputs)
  os.makedirs(path, exist_ok=True)
  return path


def evaluate(args, trained) -> None:
  results = trained.evaluate(args.split, dataset=args.dataset, data_dir=args.data_dir,
                             batch_size=args.batch_size,
                             importance_samples=args.importance_samples)
  split = args.split or trained.config.eval_split
  dataset = args.dataset or trained.config.dataset
  num_images = results.pop('num_images')
  print(f'{dataset}:{split}, {num_images} images, model {trained.name!r} at step '
        f'{trained.step}, {trained.weights} weights')
  print(f'{"metric":<16} {"value":>12}')
  first = [name for name in ('mse', 'psnr', 'ssim', 'lpips') if name in results]
  for name in first + sorted(set(results) - set(first)):
    print(f'{name:<16} {results[name]:>12.6g}')
  safe_split = re.sub(r'[^A-Za-z0-9_.-]+', '_', split)
  raw = '_raw' if trained.config.ema_decay > 0 and trained.weights == 'raw' else ''
  path = args.output or (
      f'evaluation_{args.pretrained}_{safe_split}.json' if args.pretrained else
      os.path.join(trained.workdir, f'evaluation_{safe_split}_{trained.step}{raw}.json'))
  _write_json(path, {'workdir': trained.workdir, 'step': trained.step, 'model': trained.name,
                     'weights': trained.weights,
                     'dataset': dataset, 'split': split, 'num_images': num_images,
                     'metrics': results})
  print(f'wrote {path}')


def reconstruct(args, trained) -> None:
  out = args.output
  rows, views = [], []
  # One image at a time: a folder of large photographs never sits in memory at once.
  for image in image_io.iter_images(args.inputs, channels=trained.channels,
                                    recursive=args.recursive, say=_note):
    if not rows:  # Once an image is read: none readable leaves nothing behind.
      _output_dir(out, args.inputs)
      print(f'{"image":<32} {"size":>11} {"PSNR (dB)":>10}', flush=True)
    original = image.pixels.astype(np.float32) / 255.0
    reconstruction = trained.reconstruct(original)
    recon_pixels = image_grid.to_uint8(reconstruction)
    image_grid.save_png(image.pixels, os.path.join(out, f'{image.name}_original.png'))
    image_grid.save_png(recon_pixels, os.path.join(out, f'{image.name}_reconstruction.png'))
    mse, psnr = _psnr(reconstruction, original)
    h, w = image.pixels.shape[:2]
    rows.append({'name': image.name, 'source': os.path.abspath(image.path), 'height': h,
                 'width': w, 'mse': mse, 'psnr': psnr})
    print(f'{image.name:<32} {f"{h}x{w}":>11} {psnr:>10.2f}', flush=True)
    if len(views) < MAX_GRID_PAIRS:
      views.append((image_io.full_view(image.pixels), image_io.full_view(recon_pixels)))
  mean_psnr = float(np.mean([r['psnr'] for r in rows]))
  print(f'{f"mean over {len(rows)} images":<32} {"":>11} {mean_psnr:>10.2f}')
  image_grid.save_png(image_io.pairs_grid(views), os.path.join(out, 'grid.png'))
  _write_json(os.path.join(out, 'psnr.json'),
              {'workdir': trained.workdir, 'step': trained.step, 'model': trained.name,
               'mean_psnr': mean_psnr, 'images': rows})
  shown = '' if len(rows) <= MAX_GRID_PAIRS else f' (grid.png shows the first {MAX_GRID_PAIRS})'
  print(f'wrote {len(rows)} reconstructions, grid.png and psnr.json to {out}{shown}')


def encode(args, trained) -> None:
  path = args.output
  if not path.endswith('.npz'):
    raise inference.UsageError(f'--output {path}: name the latents file FILE.npz')
  if os.path.isdir(path):
    raise inference.UsageError(f'--output {path} is a folder; name a FILE.npz')
  if os.path.exists(path) and any(os.path.exists(e) and os.path.samefile(path, e)
                                  for e in args.inputs):
    raise inference.UsageError(f'--output {path} is one of the inputs; choose another file')
  names, sources, sizes, latents = [], [], [], {}
  for image in image_io.iter_images(args.inputs, channels=trained.channels,
                                    recursive=args.recursive, say=_note):
    latents[f'latent_{len(names)}'] = trained.encode(image.pixels.astype(np.float32) / 255.0)
    names.append(image.name)
    sources.append(os.path.abspath(image.path))
    sizes.append(image.pixels.shape[:2])
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, names=np.array(names), sources=np.array(sources),
           sizes=np.array(sizes, np.int64).reshape(-1, 2), model=np.array(trained.name),
           step=np.array(trained.step), workdir=np.array(trained.workdir), **latents)
  shapes = sorted({'x'.join(map(str, a.shape)) for a in latents.values()})
  print(f'wrote {len(names)} latents (shapes {", ".join(shapes)}) to {path}')


def decode(args, trained) -> None:
  try:
    with np.load(args.latents, allow_pickle=False) as data:
      contents = {key: data[key] for key in data.files}
  except Exception as e:  # pylint: disable=broad-except  # Missing, not an npz, truncated.
    raise inference.UsageError(f'--latents {args.latents} cannot be read ({type(e).__name__}: '
                               f'{(str(e).splitlines() or [""])[0][:200]}); pass an .npz '
                               'written by encode') from None
  missing = [k for k in ('names', 'sizes') if k not in contents]
  names = [str(n) for n in contents.get('names', [])]
  missing += [f'latent_{i}' for i in range(len(names)) if f'latent_{i}' not in contents]
  if missing:
    raise inference.UsageError(f'--latents {args.latents} has no {", ".join(missing[:3])}; '
                               'pass an .npz written by encode')
  sources = [str(s) for s in contents.get('sources', [])]
  out = _output_dir(args.output, [s for s in sources if os.path.exists(s)])
  written_by = (str(contents.get('model', '?')), int(contents.get('step', -1)))
  if written_by != (trained.name, trained.step):
    _note(f'note: {args.latents} was written by model {written_by[0]!r} at step '
          f'{written_by[1]}; decoding with {trained.name!r} at step {trained.step}')
  for i, name in enumerate(names):
    image = trained.decode(contents[f'latent_{i}'], size=contents['sizes'][i])
    image_grid.save_png(image, os.path.join(out, f'{name}.png'))
  print(f'wrote {len(names)} images to {out}')


def sample(args, trained) -> None:
  if isinstance(trained, inference.TrainedPrior):
    if args.height is not None or args.width is not None:
      raise inference.UsageError('sample: a prior over codes draws grids of its first stage\'s '
                                 'training size; leave out --height and --width')
    samples = trained.sample(args.num, 1.0 if args.temperature is None else args.temperature,
                             args.top_k or 0, args.seed)
  else:
    if args.temperature is not None or args.top_k is not None:
      raise inference.UsageError('sample: --temperature and --top_k are for a prior over codes '
                                 '(the --workdir of configs/cifar_prior.py); leave them out')
    samples = trained.sample(args.num, args.seed, args.height, args.width)
  out = _output_dir(args.output, [])
  for i, image in enumerate(samples):
    image_grid.save_png(image, os.path.join(out, f'sample_{i:03d}.png'))
  image_grid.save_png(image_grid.tile(samples), os.path.join(out, 'grid.png'))
  print(f'wrote {len(samples)} samples of {samples.shape[1]}x{samples.shape[2]} and grid.png '
        f'to {out}')


def interpolate(args, trained) -> None:
  out_dir = args.output
  trained.require_can_sample('interpolate')  # Before reading anything.
  images = image_io.load_images(args.inputs, channels=trained.channels, say=_note)
  if len(images) != 2:
    raise inference.UsageError(f'interpolate needs two readable images; got {len(images)} of '
                               f'{" ".join(args.inputs)}')
  if images[0].pixels.shape != images[1].pixels.shape:
    raise inference.UsageError(
        f'interpolate needs two images of the same size; {images[0].path} is '
        f'{"x".join(map(str, images[0].pixels.shape[:2]))} and {images[1].path} is '
        f'{"x".join(map(str, images[1].pixels.shape[:2]))}')
  path = trained.interpolate(images[0].pixels, images[1].pixels, args.steps)
  out = _output_dir(out_dir, args.inputs)
  for i, image in enumerate(path):
    image_grid.save_png(image, os.path.join(out, f'interpolation_{i:02d}.png'))
  image_grid.save_png(image_grid.tile(path, columns=len(path)), os.path.join(out, 'grid.png'))
  print(f'wrote {len(path)} images from {images[0].name} to {images[1].name} and grid.png '
        f'to {out}')


def list_pretrained() -> None:
  """One line per shipped preset: its model, training and test figures (CIFAR-10 JPEG copy)."""
  shipped = pretrained.names()
  if not shipped:
    print('no pretrained models are shipped in this installation')
    return
  print(f'{"name":<16} {"model":<40} {"training":<22} test figures ({"CIFAR-10, JPEG copy"})')
  for name in shipped:
    manifest = pretrained.manifest(name)
    print(f'{name:<16} {manifest["model"]:<40} {manifest["training"]:<22} '
          f'{manifest["test_summary"]}')
  print('use: convae reconstruct --pretrained NAME IMAGES --output DIR, '
        "inference.load('pretrained:NAME'), --config.init_from=pretrained:NAME")


MODES = {'evaluate': evaluate, 'reconstruct': reconstruct, 'encode': encode, 'decode': decode,
         'sample': sample, 'interpolate': interpolate}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ['train']:  # The trainer's own flags (absl): launch.py's command line.
    from convae_jax import main as train_main  # pylint: disable=g-import-not-at-top  (absl flags)
    train_main.run([f'{_prog()} train'] + argv[1:])
  args = build_parser().parse_args(argv)
  logs.quiet_libraries()
  try:
    if args.mode == 'pretrained':
      list_pretrained()
      return 0
    if args.mode in ('reconstruct', 'encode', 'interpolate'):  # Before loading anything.
      image_io.check_inputs(args.inputs)
    if args.mode in ('reconstruct', 'interpolate'):  # Refuse a bad --output before loading.
      image_io.check_output_dir(args.output, args.inputs)
    for module in args.module:
      try:
        importlib.import_module(module)
      except ImportError as e:
        raise inference.UsageError(f'--module {module}: {e}') from None
    if args.pretrained is not None:
      trained = inference.load(pretrained.PREFIX + args.pretrained, args.step, args.weights)
    else:
      trained = inference.load(args.workdir, args.step, args.weights)
    if isinstance(trained, inference.TrainedPrior) and args.mode != 'sample':
      raise inference.UsageError(
          f'{args.mode}: {args.workdir} is a prior over codes, which samples (convae sample); '
          f'{args.mode} its first stage: --workdir {trained.first_stage.workdir}'
          .replace('--workdir pretrained:', '--pretrained '))
    MODES[args.mode](args, trained)
  except errors.UserError as e:
    return errors.report(e)
  return 0


if __name__ == '__main__':
  sys.exit(main())
