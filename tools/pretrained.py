"""Trains a CIFAR-10 preset at its defaults and ships its weights: convae_jax/pretrained/NAME.*

    python tools/pretrained.py NAME --data_dir D --workdir W

D holds CIFAR-10 as TFDS prepares it (offline: `python -m convae_jax.datasets.import_cifar10`,
docs/data.md). In order:
1. trains `configs/cifar.py:NAME` into W with launch.py, at the preset's defaults plus
   --config.data_dir (a W with checkpoints resumes; a finished one returns at once);
2. evaluates the run's weights on the 10,000 test images;
3. writes NAME.msgpack and NAME.json (convae_jax/pretrained), the manifest with the whole
   config, the data, steps, training time, machine kind, test figures and sha256, and keeps
   the run's config, metrics and last pictures in results/pretrained/NAME (tools/keep_run.sh)
   with the test figures (evaluation_test_STEP.json) for the results tables;
4. records in the manifest the figures the tests check (tests/test_pretrained.py): the
   evaluation of the shipped weights on the embedded photo_patches test split, computed as
   the tests compute it (4 fake CPU devices, few optimizations), with the machine kind.
`--only_manifest` skips step 1 (W already trained). `python tools/pretrained.py --table`
prints the shipped presets as a Markdown table (docs/pretrained.md).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# The environment tests/conftest.py gives the tests, for the reference figures (step 4).
TEST_ENV = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4', 'JAX_PLATFORMS': 'cpu',
            'JAX_DISABLE_MOST_OPTIMIZATIONS': '1', 'CONVAE_MALLOC_TUNING': '0'}
PHOTO_EVAL_BATCH = 128
DATA = ('CIFAR-10, JPEG copy (quality 75) of the 60,000 images, imported with '
        'convae_jax.datasets.import_cifar10: not the original pixels, so its figures are not '
        'comparable with published CIFAR-10 figures')


def train(name: str, data_dir: str, workdir: str) -> float:
  """Runs launch.py; returns its wall time in seconds, added to earlier sessions' (W holds
  the sum in pretrained_training_seconds.json)."""
  start = time.monotonic()
  subprocess.run([sys.executable, os.path.join(REPO, 'launch.py'), '--config',
                  os.path.join(REPO, 'configs', 'cifar.py') + f':{name}', '--workdir', workdir,
                  f'--config.data_dir={data_dir}'], check=True)
  path = os.path.join(workdir, 'pretrained_training_seconds.json')
  total = (json.load(open(path))['seconds'] if os.path.exists(path) else 0.0) + (
      time.monotonic() - start)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'seconds': total}, f)
  return total


def summary(metrics: dict, num_codes: int) -> str:
  """The preset's main test figures, in a few words."""
  lpips = f', LPIPS {metrics["lpips"]:.4f}' if 'lpips' in metrics else ''
  if 'bpd' in metrics:
    return f'{metrics["bpd"]:.3f} bits/dim, {metrics["psnr"]:.2f} dB PSNR{lpips}'
  text = f'{metrics["psnr"]:.2f} dB PSNR, SSIM {metrics["ssim"]:.3f}{lpips}'
  if 'codes_used' in metrics:
    text += f', {100 * metrics["codes_used"]:.1f}% of {num_codes} codes used'
  return text


def export(name: str, data_dir: str, workdir: str, seconds: float | None) -> dict:
  from convae_jax import inference, pretrained  # pylint: disable=g-import-not-at-top
  trained = inference.load(workdir)
  metrics = trained.evaluate('test', data_dir=data_dir)
  num_images = metrics.pop('num_images')
  if num_images != 10_000:
    raise SystemExit(f'{name}: the test split has {num_images} images, not 10,000')
  config = trained.config.copy_and_resolve_references()
  config.data_dir = None  # Where it was read here; TFDS's default wherever the weights go.
  training = (f'{config.num_epochs:g} epochs ({trained.step} steps)'
              if config.num_train_steps <= 0 else f'{trained.step} steps')
  if seconds is None:
    path = os.path.join(workdir, 'pretrained_training_seconds.json')
    seconds = json.load(open(path))['seconds'] if os.path.exists(path) else None
  image_shape = (32, 32, trained.channels)
  return pretrained.write(name, {'params': trained.state.params,
                                 'model_state': trained.state.model_state}, {
      'model': trained.name, 'config': json.loads(config.to_json_best_effort()),
      'image_shape': list(image_shape), 'steps': trained.step, 'weights': trained.weights,
      'training': training,
      'training_seconds': None if seconds is None else round(seconds),
      'machine': pretrained.machine_kind(), 'data': DATA,
      'command': f'python tools/pretrained.py {name} --data_dir D --workdir W',
      'test_metrics': {k: float(v) for k, v in metrics.items()}, 'test_images': num_images,
      'test_summary': summary(metrics, trained.model.num_codes)})


def reference(name: str) -> None:
  """Step 4, in a process with the tests' environment: prints the photo_patches figures."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top,unused-import  (datasets registers photo_patches)
  from convae_jax import datasets, inference, pretrained
  with tempfile.TemporaryDirectory() as data_dir:
    tfds.builder('photo_patches', data_dir=data_dir).download_and_prepare()
    metrics = inference.load(pretrained.PREFIX + name).evaluate(
        'test', dataset='photo_patches', data_dir=data_dir, batch_size=PHOTO_EVAL_BATCH)
  print(json.dumps({'metrics': metrics, 'machine': pretrained.machine_kind(),
                    'batch_size': PHOTO_EVAL_BATCH}))


def table() -> str:
  """The shipped presets as a Markdown table, from their manifests."""
  from convae_jax import pretrained  # pylint: disable=g-import-not-at-top
  rows = ['| preset | model | training | test figures (CIFAR-10, JPEG copy, 10,000 images) | '
          'training time | machine | weights |', '|---|---|---|---|---|---|---|']
  for name in pretrained.names():
    m = pretrained.manifest(name)
    minutes = '-' if m['training_seconds'] is None else f'{m["training_seconds"] / 60:.0f} min'
    # The loss terms beside the parts, as the results tables name a model.
    model = '+'.join([m['model'], *sorted(m['config'].get('losses') or {})])
    rows.append(f'| `{name}` | {model} | {m["training"]} | {m["test_summary"]} | '
                f'{minutes} | {m["machine"]} | {m["bytes"] / 1024:,.0f} KiB |')
  return '\n'.join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('name', nargs='?')
  parser.add_argument('--table', action='store_true',
                      help='print the shipped presets as a Markdown table and exit')
  parser.add_argument('--data_dir')
  parser.add_argument('--workdir')
  parser.add_argument('--only_manifest', action='store_true')
  parser.add_argument('--reference', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.table:
    return print(table())
  if not args.name:
    parser.error('name the preset to train')
  if args.reference:
    return reference(args.name)
  if not (args.data_dir and args.workdir):
    parser.error('--data_dir and --workdir are required')
  seconds = None if args.only_manifest else train(args.name, args.data_dir, args.workdir)
  manifest = export(args.name, args.data_dir, args.workdir, seconds)
  # What the results tables read of the run (results/pretrained/NAME), kept where it trained,
  # with the test figures of the shipped weights (those the run's log predates, LPIPS).
  kept = os.path.join(REPO, 'results', 'pretrained', args.name)
  subprocess.run(['bash', os.path.join(REPO, 'tools', 'keep_run.sh'), args.workdir, kept],
                 check=True)
  with open(os.path.join(kept, f'evaluation_test_{manifest["steps"]}.json'), 'w',
            encoding='utf-8') as f:
    json.dump({'split': 'test', 'step': manifest['steps'], 'num_images': manifest['test_images'],
               'metrics': manifest['test_metrics']}, f, indent=2)
  out = subprocess.run([sys.executable, __file__, args.name, '--reference'], check=True,
                       capture_output=True, text=True, env={**os.environ, **TEST_ENV})
  manifest['photo_patches_test'] = json.loads(out.stdout.strip().splitlines()[-1])
  from convae_jax import pretrained  # pylint: disable=g-import-not-at-top
  path = pretrained.write_manifest(args.name, manifest)
  print(f'{args.name}: {manifest["test_summary"]} ({manifest["training"]}); wrote {path}')


if __name__ == '__main__':
  main()
