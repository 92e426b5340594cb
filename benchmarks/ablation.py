"""What each CPU optimization buys: the seed model's train step, one change at a time.

    python benchmarks/ablation.py --batch_size 128 --rounds 3 --output ablation.json

Each setting runs in a fresh process (malloc settings are read at process start) on random
uint8 images through the trainer's own pmapped train step. Settings are visited in turn,
`--rounds` times, so machine noise spreads over all of them; the table gives each setting's
median images/s. Settings, cumulative from the top:
  flax layers      nn.Conv, nn.max_pool, nn.ConvTranspose: the straightforward port
  + malloc         glibc malloc settings of convae_jax/malloc_env.py (CONVAE_MALLOC_TUNING=1)
  + pool           max pooling as an elementwise max of the window's strided views, with a
                   custom gradient (layers.max_pool), the bias added before it
  + deconv         k2s2 transposed conv as one matrix product + depth-to-space
                   (layers.PatchConvTranspose)
  + tap-sum conv   the 3-channel first conv's forward pass as 27 fused multiply-adds
                   (layers.Conv with few input channels)
  + 512-bit        XLA_FLAGS=--xla_cpu_prefer_vector_width=512 (convae_jax/xla_cpu_flags.py,
                   which launch.py applies on AVX-512 CPUs)
  + pooled bias    the conv's bias added by the pooling (layers.Conv's pool_window), so its
                   gradient is a sum over the pooled gradient: the default setup as shipped
  + 4 micro-batches  config.micro_batches=4, which the README advises on CPU
  + patch conv     3x3 convs as patches + one matrix product (layers' conv='patch'): tried,
                   not kept
  shipped + no ynn the shipped model and flags plus --xla_cpu_experimental_ynn_fusion_type=
                   (an empty list, which is already the flag's default in jax 0.10.2: this
                   row repeats the shipped one and shows the run-to-run noise)
All settings pool before SELU, as the model does (the same function: SELU is increasing).
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

# Formulations, in the order they are switched on.
LAYERS = ('pool', 'deconv', 'tapsum', 'poolbias', 'conv')
SHIPPED = ('pool', 'deconv', 'tapsum', 'poolbias')
WIDE = ' '.join(xla_cpu_flags.flag_strings())  # What launch.py adds on AVX-512 CPUs.
NO_YNN = '--xla_cpu_experimental_ynn_fusion_type='


class Setting(NamedTuple):
  name: str
  malloc: bool  # The glibc malloc settings.
  keep: tuple[str, ...]  # Our layer formulations switched on.
  xla_flags: str = ''
  micro_batches: int = 1


SETTINGS = [
    Setting('flax layers', False, ()),
    Setting('+ malloc', True, ()),
    Setting('+ pool', True, ('pool',)),
    Setting('+ deconv', True, ('pool', 'deconv')),
    Setting('+ tap-sum conv', True, SHIPPED[:3]),
    Setting('+ 512-bit', True, SHIPPED[:3], WIDE),
    Setting('+ pooled bias (shipped)', True, SHIPPED, WIDE),
    Setting('+ 4 micro-batches', True, SHIPPED, WIDE, 4),
    Setting('+ patch conv', True, LAYERS, WIDE),
    Setting('shipped + no ynn', True, SHIPPED, f'{WIDE} {NO_YNN}'),
]


def formulations_of(keep: tuple[str, ...]) -> dict[str, object]:
  """The layers.Formulations of a setting: plain Flax forms for what `keep` lacks."""
  return {'pool': 'views' if 'pool' in keep else 'flax',
          'pooled_bias': 'poolbias' in keep,
          'conv': 'patch' if 'conv' in keep else 'tap_sum' if 'tapsum' in keep else 'lax',
          'deconv': 'matmul' if 'deconv' in keep else 'lax'}


def worker(args) -> None:
  """One setting, in this process: prints a JSON line {images_per_sec, compile_s}."""
  import train_step  # pylint: disable=g-import-not-at-top  (benchmarks/, beside this file)
  from convae_jax.models import layers  # pylint: disable=g-import-not-at-top
  with layers.formulations(**formulations_of(tuple(filter(None, args.keep.split(','))))):
    result = train_step.benchmark('cae', args.batch_size, args.steps, args.windows, warmup=10,
                                  micro_batches=args.micro_batches)
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
      [sys.executable, __file__, '--worker', '--keep', ','.join(setting.keep),
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
  parser.add_argument('--keep', default='', help=argparse.SUPPRESS)
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
