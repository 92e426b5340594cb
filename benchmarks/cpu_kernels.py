"""A preset's train step under several CPU kernel sets (config.kernels), A/B in one process.

    python benchmarks/cpu_kernels.py --model resae --variant cpu:auto --variant plain:none
    python benchmarks/cpu_kernels.py --model resae --widths 32,64 --variant cpu:auto \
        --variant no_group_norm:pooled_conv,conv_transpose,upsample_conv

Each `--variant NAME:KERNELS` names a config.kernels value. Every variant is compiled ahead of
time, then windows alternate between the variants so that machine noise hits all of them;
prints and writes the median window of each. Random uint8 images; the trainer's defaults
otherwise, as launch.py runs them.
"""
import argparse
import json
import statistics
import time

from convae_jax import malloc_env, xla_cpu_flags

if __name__ == '__main__':
  malloc_env.ensure()  # As launch.py does.
  xla_cpu_flags.apply()

import jax  # pylint: disable=wrong-import-position

import machine  # pylint: disable=wrong-import-position  (benchmarks/, beside this file)
import train_step  # pylint: disable=wrong-import-position
from convae_jax.cpu import kernels as cpu_kernels  # pylint: disable=wrong-import-position


def parse_variant(text: str) -> tuple[str, str]:
  name, _, kernels = text.partition(':')
  cpu_kernels.parse(kernels)
  return name, kernels


def compiled_step(model: str, batch_size: int, backbone: dict, kernels: str):
  step, state, batch, micro_batches = train_step.make_step(
      model, batch_size, jax.local_devices(), backbone=backbone, kernels=kernels)
  compiled = step.lower(state, batch, jax.random.key(1)).compile()
  return train_step.step_runner(compiled, state, batch), micro_batches


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resae')
  parser.add_argument('--widths', default='', help='the backbone\'s widths, e.g. 32,64')
  parser.add_argument('--variant', action='append', required=True)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=8)
  parser.add_argument('--windows', type=int, default=9)
  parser.add_argument('--output', default='cpu_kernels.json')
  args = parser.parse_args()
  backbone = {'widths': tuple(map(int, args.widths.split(',')))} if args.widths else {}
  runs, micro_batches = {}, None
  for name, kernels in map(parse_variant, args.variant):
    runs[name], micro_batches = compiled_step(args.model, args.batch_size, backbone, kernels)
    runs[name](3)  # Warm up.
  seconds = {name: [] for name in runs}
  for _ in range(args.windows):
    for name, run in runs.items():
      start = time.perf_counter()
      run(args.steps)
      seconds[name].append(time.perf_counter() - start)
  rates = {name: round(args.steps * args.batch_size / statistics.median(s), 1)
           for name, s in seconds.items()}
  for name in runs:
    print(f'{name:>16} {rates[name]:>10} images/s')
  with open(args.output, 'w', encoding='utf-8') as f:
    json.dump({'model': args.model, 'backbone': backbone, 'variants': args.variant,
               'images_per_sec': rates, 'micro_batches': micro_batches,
               'machine': machine.describe()}, f, indent=2)


if __name__ == '__main__':
  main()
