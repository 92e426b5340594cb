"""Train-step throughput of the real pmapped train step, per model and batch size.

    python benchmarks/train_step.py --models cae,resae --batch_sizes 64,128,256 --output out.json
    python benchmarks/train_step.py --models resae --batch_sizes 128 --dtypes float32,bfloat16

Random uint8 images, as the input pipeline streams them (the step's cost does not depend on
pixel values). For each (model, batch): compile time (the first call), then `--windows` timed
windows of `--steps` steps after `--warmup` steps; reports the median window in images/s.
Run it on an otherwise idle machine.
"""
import argparse
import json
import os
import statistics
import time

from convae_jax import malloc_env, xla_cpu_flags

if __name__ == '__main__':
  malloc_env.ensure()  # As launch.py does (CONVAE_MALLOC_TUNING=0 measures without them).
  xla_cpu_flags.apply()  # As launch.py does.

import flax.jax_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import ml_collections
import numpy as np

import machine  # pylint: disable=wrong-import-position  (benchmarks/, beside this file)
from configs import cifar  # pylint: disable=wrong-import-position
from convae_jax import losses, models, optimizer, steps  # pylint: disable=wrong-import-position


def make_step(variant: str, batch_size: int, devices, micro_batches: int = 0,
              dtype: str = 'float32', backbone: dict | None = None, kernels: str = 'auto',
              loss_terms: dict | None = None):
  """(step function, replicated state, device batch, micro-batches used) of the trainer's
  own train step; micro_batches 0 chooses them as the trainer does (steps.micro_batches).
  `backbone` updates the preset's config.model.backbone (e.g. {'widths': (32, 64)});
  `kernels` is config.kernels; `loss_terms`, when given, replaces config.losses."""
  config = cifar.get_config(variant)
  config.batch_size, config.dtype, config.kernels = batch_size, dtype, kernels
  config.model.backbone.update(backbone or {})
  if loss_terms is not None:
    config.losses = ml_collections.ConfigDict(loss_terms)
  model = models.create_model(config.model, dtype)
  config.micro_batches = micro_batches  # 0: resolved below, as the trainer does.
  config.micro_batches = steps.micro_batches(config, model, len(devices), jax.default_backend(),
                                             (32, 32, 3))
  state = steps.create_train_state(model, optimizer.create_optimizer(config), jax.random.key(0),
                                   (32, 32, 3), objective=losses.Objective(config.losses))
  step = steps.make_train_step(config, model, (32, 32, 3))
  images = np.random.default_rng(0).integers(
      0, 256, (len(devices), batch_size // len(devices), 32, 32, 3), dtype=np.uint8)
  batch = next(flax.jax_utils.prefetch_to_device(iter([images]), 1, devices))
  return step, flax.jax_utils.replicate(state, devices), batch, config.micro_batches


def step_runner(step, state, batch):
  """run(n): `n` calls of the pmapped train `step` from `state` on `batch` (the state carried
  from call to call), blocked on at the end."""
  rng = jax.random.key(1)
  holder = {'state': state}

  def run(n):
    out = None
    for _ in range(n):
      holder['state'], out = step(holder['state'], batch, rng)
    jax.block_until_ready(out)

  return run


def time_windows(run_steps, steps: int, windows: int) -> list[float]:
  """Seconds per window of `steps` calls (results blocked on at the end of each)."""
  times = []
  for _ in range(windows):
    start = time.perf_counter()
    run_steps(steps)
    times.append(time.perf_counter() - start)
  return times


def benchmark(variant: str, batch_size: int, steps: int, windows: int, warmup: int,
              micro_batches: int = 0, dtype: str = 'float32', kernels: str = 'auto') -> dict:
  devices = jax.local_devices()
  step, state, batch, micro_batches = make_step(variant, batch_size, devices, micro_batches,
                                                dtype, kernels=kernels)
  run_steps = step_runner(step, state, batch)
  start = time.perf_counter()
  run_steps(1)
  compile_s = time.perf_counter() - start
  run_steps(warmup)
  seconds = statistics.median(time_windows(run_steps, steps, windows))
  return {'model': variant, 'batch_size': batch_size, 'compile_s': round(compile_s, 2),
          'images_per_sec': round(steps * batch_size / seconds, 1), 'devices': len(devices),
          'micro_batches': micro_batches, 'dtype': dtype, 'kernels': kernels}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default=','.join(cifar.VARIANTS))
  parser.add_argument('--batch_sizes', default='64,128,256')
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--windows', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=10)
  parser.add_argument('--micro_batches', type=int, default=0,
                      help='config.micro_batches (0: chosen as the trainer does)')
  parser.add_argument('--dtypes', default='float32', help='config.dtype values, e.g. '
                      'float32,bfloat16')
  parser.add_argument('--kernels', default='auto', help='config.kernels (convae_jax/cpu)')
  parser.add_argument('--output', default='train_step.json')
  args = parser.parse_args()
  results = []
  print(f'{"model":>10} {"batch":>6} {"dtype":>9} {"compile s":>10} {"images/s":>10}')
  for variant in args.models.split(','):
    for batch_size in map(int, args.batch_sizes.split(',')):
      for dtype in args.dtypes.split(','):
        r = benchmark(variant, batch_size, args.steps, args.windows, args.warmup,
                      args.micro_batches, dtype, args.kernels)
        results.append(r)
        print(f'{variant:>10} {batch_size:>6} {dtype:>9} {r["compile_s"]:>10} '
              f'{r["images_per_sec"]:>10}', flush=True)
  env = {k: os.environ.get(k) for k in ('XLA_FLAGS', 'MALLOC_ARENA_MAX', 'MALLOC_TOP_PAD_')}
  with open(args.output, 'w', encoding='utf-8') as f:
    json.dump({'results': results, 'jax': jax.__version__, 'env': env,
               'machine': machine.describe()}, f, indent=2)


if __name__ == '__main__':
  main()
