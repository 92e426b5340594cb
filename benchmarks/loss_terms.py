"""What the loss terms cost: train-step throughput of a preset alone and with each term.

    python benchmarks/loss_terms.py --output benchmarks/results/DATE_KIND_loss_terms.json

For `--model` (default vqvae-resnet, the backbone and bottleneck of vqgan-resnet): the step
with no extra term, with LPIPS-AlexNet, with LPIPS-VGG16, with the adversarial term alone,
and vqgan-resnet's whole objective with each LPIPS network. Timed as benchmarks/train_step.py
times a step (median window, random uint8 images). Run it on an otherwise idle machine.
"""
import argparse
import json
import statistics
import time

from convae_jax import malloc_env, xla_cpu_flags

if __name__ == '__main__':
  malloc_env.ensure()  # As launch.py does.
  xla_cpu_flags.apply()

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

import machine  # benchmarks/, beside this file
import train_step
from configs import cifar

ADVERSARIAL = cifar.LOSSES['vqgan-resnet']['adversarial']


def variants() -> dict[str, dict]:
  lpips = lambda network: {'weight': 1.0, 'network': network}
  return {
      'none': {},
      'lpips-alexnet': {'lpips': lpips('alexnet')},
      'lpips-vgg16': {'lpips': lpips('vgg16')},
      'adversarial': {'adversarial': ADVERSARIAL},
      'lpips-alexnet+adversarial': {'lpips': lpips('alexnet'), 'adversarial': ADVERSARIAL},
      'lpips-vgg16+adversarial': {'lpips': lpips('vgg16'), 'adversarial': ADVERSARIAL},
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='vqvae-resnet')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--windows', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--only', default='', help='comma-separated variant names')
  parser.add_argument('--output', default='loss_terms.json')
  args = parser.parse_args()
  devices = jax.local_devices()
  results = []
  print(f'{"terms":>28} {"compile s":>10} {"images/s":>10} {"x none":>8}')
  for name, terms in variants().items():
    if args.only and name not in args.only.split(','):
      continue
    step, state, batch, micro_batches = train_step.make_step(
        args.model, args.batch_size, devices, loss_terms=terms)
    run = train_step.step_runner(step, state, batch)
    start = time.perf_counter()
    run(1)
    compile_s = time.perf_counter() - start
    run(args.warmup)
    seconds = statistics.median(train_step.time_windows(run, args.steps, args.windows))
    rate = args.steps * args.batch_size / seconds
    results.append({'terms': name, 'losses': terms, 'compile_s': round(compile_s, 2),
                    'images_per_sec': round(rate, 1), 'micro_batches': micro_batches})
    slowdown = results[0]['images_per_sec'] / rate if results[0]['terms'] == 'none' else None
    print(f'{name:>28} {compile_s:>10.1f} {rate:>10.1f} '
          f'{"" if slowdown is None else f"{slowdown:.2f}":>8}', flush=True)
  with open(args.output, 'w', encoding='utf-8') as f:
    json.dump({'model': args.model, 'batch_size': args.batch_size, 'results': results,
               'devices': len(devices), 'jax': jax.__version__,
               'machine': machine.describe()}, f, indent=2)


if __name__ == '__main__':
  main()
