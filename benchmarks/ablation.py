"""What each CPU optimization buys: the seed model's train step, one change at a time.

    python benchmarks/ablation.py --batch_size 128 --rounds 3 --output ablation.json

Each setting runs in a fresh process (malloc settings are read at process start) on random
uint8 images through the trainer's own pmapped train step. Settings are visited in turn,
`--rounds` times, so machine noise spreads over all of them; the table gives each setting's
median images/s. Settings, cumulative from the top:
  flax layers      the plain Flax model (config.kernels=none)
  + malloc         glibc malloc settings of convae_jax/malloc_env.py (CONVAE_MALLOC_TUNING=1)
  + pooled conv    the CPU kernel of layers.PooledConv (convae_jax/cpu/pooled_conv.py): tap
                   sums for the 3-channel conv, pooling with a one-select gradient, the bias
                   added after the pooling
  + conv transpose the CPU kernel of the k2s2 nn.ConvTranspose: one matrix product and a
                   depth-to-space (convae_jax/cpu/conv_transpose.py)
  + 512-bit        XLA_FLAGS=--xla_cpu_prefer_vector_width=512 (convae_jax/xla_cpu_flags.py,
                   which launch.py applies on AVX-512 CPUs): the default setup as shipped
  + 4 micro-batches  config.micro_batches=4
Run it on an otherwise idle machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import NamedTuple

from convae_jax import xla_cpu_flags

WIDE = ' '.join(xla_cpu_flags.flag_strings())  # What launch.py adds on AVX-512 CPUs.


class Setting(NamedTuple):
  name: str
  malloc: bool  # The glibc malloc settings.
  kernels: str  # config.kernels.
  xla_flags: str = ''
  micro_batches: int = 1


SHIPPED = 'pooled_conv,conv_transpose'  # The seed's modules with a CPU kernel.
SETTINGS = [
    Setting('flax layers', False, 'none'),
    Setting('+ malloc', True, 'none'),
    Setting('+ pooled conv', True, 'pooled_conv'),
    Setting('+ conv transpose', True, SHIPPED),
    Setting('+ 512-bit (shipped)', True, SHIPPED, WIDE),
    Setting('+ 4 micro-batches', True, SHIPPED, WIDE, 4),
]


def worker(args) -> None:
  """One setting, in this process: prints a JSON line {images_per_sec, compile_s}."""
  import train_step  # pylint: disable=g-import-not-at-top  (benchmarks/, beside this file)
  result = train_step.benchmark('cae', args.batch_size, args.steps, args.windows, warmup=10,
                                micro_batches=args.micro_batches, kernels=args.kernels)
  print(json.dumps(result))


def run_setting(setting: Setting, args) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('MALLOC_') and k != 'XLA_FLAGS'}
  env['CONVAE_MALLOC_TUNING'] = '0'
  if setting.malloc:
    from convae_jax import malloc_env  # pylint: disable=g-import-not-at-top
    env.update(malloc_env.SETTINGS)
  if setting.xla_flags:
    env['XLA_FLAGS'] = setting.xla_flags
  out = subprocess.run(
      [sys.executable, __file__, '--worker', '--kernels', setting.kernels,
       '--batch_size', str(args.batch_size), '--steps', str(args.steps),
       '--windows', str(args.windows), '--micro_batches', str(setting.micro_batches)],
      env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--windows', type=int, default=5)
  parser.add_argument('--output', default='ablation.json')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--kernels', default='none', help=argparse.SUPPRESS)
  parser.add_argument('--micro_batches', type=int, default=1, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args)

  runs = {setting.name: [] for setting in SETTINGS}
  for _ in range(args.rounds):
    for setting in SETTINGS:
      runs[setting.name].append(run_setting(setting, args))
  rows, baseline = [], None
  print(f'{"setting":<22} {"images/s":>9} {"x flax":>7} {"compile s":>10}')
  for name, results in runs.items():
    rate = statistics.median(r['images_per_sec'] for r in results)
    compile_s = statistics.median(r['compile_s'] for r in results)
    baseline = baseline or rate
    rows.append({'setting': name, 'images_per_sec': rate, 'speedup': round(rate / baseline, 2),
                 'compile_s': compile_s, 'rounds': [r['images_per_sec'] for r in results]})
    print(f'{name:<22} {rate:>9.0f} {rate / baseline:>7.2f} {compile_s:>10.2f}', flush=True)
  with open(args.output, 'w', encoding='utf-8') as f:
    json.dump({'batch_size': args.batch_size, 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  main()
