"""The seed model's train step, this repo's JAX version against PyTorch, in one process.

    python benchmarks/compare_torch.py --batch_size 128 --output compare.json

Both train the same model (7,347 parameters: MSE, Adam 1e-3) on the same random [0, 1]
batch. PyTorch runs in the setting that was fastest here (torch.compile of the whole step on
a channels-last model; --torch_mode picks another); the JAX side is the trainer's own
pmapped train step, with --micro_batches as its config.micro_batches (default 0: chosen as
the trainer chooses them, so on CPU independent parts that XLA:CPU runs on both cores; see
docs/performance.md). Windows alternate (torch, jax,
torch, jax, ...) so that machine noise hits both; the median window of each is reported
with the ratio jax/torch. Needs torch (not a project dependency). Both run with the glibc
malloc settings of convae_jax/malloc_env.py (set on start unless CONVAE_MALLOC_TUNING=0),
which sped up PyTorch here too.
"""
import argparse
import json
import os
import statistics
import time

from convae_jax import malloc_env, xla_cpu_flags

if __name__ == '__main__':
  malloc_env.ensure(default_on=True)  # CONVAE_MALLOC_TUNING=0 measures without them.
  xla_cpu_flags.apply()  # As launch.py does.

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch

import train_step  # pylint: disable=wrong-import-position  (benchmarks/, beside this file)
from convae_jax import torch_seed  # pylint: disable=wrong-import-position


def torch_runner(batch_size: int, mode: str):
  torch.manual_seed(0)
  model = torch_seed.SeedAutoencoder()
  x = torch.rand(batch_size, 3, 32, 32)
  if mode in ('channels_last', 'compile'):
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

  def one_step(x):
    loss = torch.nn.functional.mse_loss(model(x), x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss

  step = torch.compile(one_step) if mode == 'compile' else one_step

  def run(n):
    for _ in range(n):
      loss = step(x)
    loss.item()

  return run


def jax_runner(batch_size: int, micro_batches: int):
  """(run(n steps), the micro-batches it uses) of the trainer's own step."""
  step, state, batch, micro_batches = train_step.make_step('cae', batch_size,
                                                           jax.local_devices(), micro_batches)
  rng = jax.random.key(1)
  holder = {'state': state}

  def run(n):
    out = None
    for _ in range(n):
      holder['state'], out = step(holder['state'], batch, rng)
    jax.block_until_ready(out)

  return run, micro_batches


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--windows', type=int, default=7)
  parser.add_argument('--torch_mode', default='compile',
                      choices=['eager', 'channels_last', 'compile'])
  parser.add_argument('--micro_batches', type=int, default=0,
                      help='config.micro_batches of the JAX step (0: chosen as the trainer '
                      'does)')
  parser.add_argument('--output', default='compare_torch.json')
  args = parser.parse_args()

  jax_run, micro_batches = jax_runner(args.batch_size, args.micro_batches)
  runners = {'torch': torch_runner(args.batch_size, args.torch_mode), 'jax': jax_run}
  for run in runners.values():  # Compile and warm up.
    run(10)
  seconds = {name: [] for name in runners}
  for _ in range(args.windows):
    for name, run in runners.items():
      start = time.perf_counter()
      run(args.steps)
      seconds[name].append(time.perf_counter() - start)
  rates = {name: args.steps * args.batch_size / statistics.median(s) for name, s in seconds.items()}
  result = {
      'batch_size': args.batch_size, 'torch_mode': args.torch_mode,
      'torch_images_per_sec': round(rates['torch'], 1),
      'jax_images_per_sec': round(rates['jax'], 1), 'jax_devices': jax.local_device_count(),
      'jax_micro_batches': micro_batches,
      'ratio_jax_over_torch': round(rates['jax'] / rates['torch'], 3),
      'torch': torch.__version__, 'jax': jax.__version__, 'torch_threads': torch.get_num_threads(),
      'env': {k: os.environ.get(k) for k in ('XLA_FLAGS', 'MALLOC_ARENA_MAX', 'MALLOC_TOP_PAD_',
                                             'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')},
  }
  print(f'batch {args.batch_size}: PyTorch ({args.torch_mode}) {result["torch_images_per_sec"]} '
        f'img/s, JAX ({micro_batches} micro-batches) {result["jax_images_per_sec"]} '
        f'img/s, ratio {result["ratio_jax_over_torch"]}')
  with open(args.output, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
