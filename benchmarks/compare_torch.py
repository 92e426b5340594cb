"""A model's train step, ours (JAX) against the same network in PyTorch, in one process.

    python benchmarks/compare_torch.py --batch_size 128 --output compare.json
    python benchmarks/compare_torch.py --model resae --widths 32,64 --output compare.json

`--model cae` is the seed (7,347 parameters; PyTorch's in benchmarks/torch_seed.py), `resae`
the resnet backbone with GroupNorm and SiLU (benchmarks/torch_resnet.py; `--widths` sets its
stage widths). Before timing, the script loads the PyTorch weights into the Flax model and
checks that both have the same parameter count and compute the same reconstructions.

Both train with MSE and Adam 1e-3 on the same random [0, 1] batch. PyTorch runs in each of
`--torch_modes` (eager NCHW, eager channels-last, torch.compile of the whole step on the
channels-last model); the ratio is against the fastest. The JAX side is the trainer's own
pmapped train step at the trainer's defaults (micro-batches chosen as the trainer chooses
them). Windows alternate (each torch mode, jax, each torch mode, jax, ...) so that machine
noise hits all of them; the median window of each is reported. Needs torch (not a project
dependency). Runs under the environment launch.py sets up by default (convae_jax/malloc_env.py,
convae_jax/xla_cpu_flags.py), PyTorch included.
"""
import argparse
import json
import os
import statistics
import time

from convae_jax import malloc_env, xla_cpu_flags

if __name__ == '__main__':
  malloc_env.ensure()  # As launch.py does (CONVAE_MALLOC_TUNING=0 measures without them).
  xla_cpu_flags.apply()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import torch

import machine  # pylint: disable=wrong-import-position  (benchmarks/, beside this file)
import torch_resnet  # pylint: disable=wrong-import-position
import train_step  # pylint: disable=wrong-import-position
from configs import cifar  # pylint: disable=wrong-import-position
import torch_seed  # pylint: disable=wrong-import-position
from convae_jax import models  # pylint: disable=wrong-import-position

TORCH_MODES = ('eager', 'channels_last', 'compile')
DEFAULT_STEPS = {'cae': 40, 'resae': 8}  # Per window: a few seconds each.


def torch_model(variant: str, backbone: dict) -> torch.nn.Module:
  torch.manual_seed(0)
  if variant == 'cae':
    return torch_seed.SeedAutoencoder()
  return torch_resnet.ResNetAutoencoder(**backbone)


def check_same_network(variant: str, backbone: dict) -> int:
  """The parameter count, after checking that the Flax model with the PyTorch weights has as
  many parameters and gives the same reconstructions."""
  model = torch_model(variant, backbone)
  config = cifar.get_config(variant)
  config.model.backbone.update(backbone)
  flax_model = models.create_model(config.model)
  images = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
  if variant == 'cae':
    params = torch_seed.torch_to_flax_params(model)
  else:
    params = torch_resnet.torch_to_flax_params(model)
  expected = jax.tree.structure(
      flax_model.init(jax.random.key(0), images[:1])['params'])
  if jax.tree.structure(params) != expected:
    raise SystemExit(f'compare_torch.py: the PyTorch {variant} has other parameters than ours')
  count = sum(p.numel() for p in model.parameters())
  ours = sum(x.size for x in jax.tree.leaves(params))
  flax_out = flax_model.apply({'params': params}, images).reconstruction
  with torch.no_grad():
    torch_out = model(torch.from_numpy(images).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  difference = float(np.max(np.abs(np.asarray(flax_out) - torch_out)))
  if count != ours or difference > 1e-4:
    raise SystemExit(f'compare_torch.py: the PyTorch {variant} is not our network '
                     f'({count} vs {ours} parameters, outputs {difference:.2e} apart)')
  return count


def torch_runner(variant: str, backbone: dict, batch_size: int, mode: str):
  model = torch_model(variant, backbone)
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


def jax_runner(variant: str, backbone: dict, batch_size: int):
  """(run(n steps), the micro-batches it uses) of the trainer's own step at its defaults."""
  step, state, batch, micro_batches = train_step.make_step(
      variant, batch_size, jax.local_devices(), backbone=backbone)
  return train_step.step_runner(step, state, batch), micro_batches


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='cae', choices=sorted(DEFAULT_STEPS))
  parser.add_argument('--widths', default='', help="resae's stage widths, e.g. 32,64 "
                      '(default: the preset\'s)')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=0, help='steps per window (0: '
                      f'{DEFAULT_STEPS})')
  parser.add_argument('--windows', type=int, default=7)
  parser.add_argument('--torch_modes', default='channels_last,compile',
                      help=f'comma-separated, of {", ".join(TORCH_MODES)}')
  parser.add_argument('--output', default='compare_torch.json')
  args = parser.parse_args()
  modes = args.torch_modes.split(',')
  if not set(modes) <= set(TORCH_MODES) or (args.widths and args.model != 'resae'):
    parser.error(f'--torch_modes takes {", ".join(TORCH_MODES)}; --widths only with resae')
  backbone = {'widths': tuple(map(int, args.widths.split(',')))} if args.widths else {}
  steps = args.steps or DEFAULT_STEPS[args.model]

  parameters = check_same_network(args.model, backbone)
  jax_run, micro_batches = jax_runner(args.model, backbone, args.batch_size)
  runners = {f'torch_{mode}': torch_runner(args.model, backbone, args.batch_size, mode)
             for mode in modes}
  runners['jax'] = jax_run
  compile_s = {}
  for name, run in runners.items():  # Compile and warm up.
    start = time.perf_counter()
    run(3)
    compile_s[name] = round(time.perf_counter() - start, 1)
  seconds = {name: [] for name in runners}
  for _ in range(args.windows):
    for name, run in runners.items():
      start = time.perf_counter()
      run(steps)
      seconds[name].append(time.perf_counter() - start)
  rates = {name: round(steps * args.batch_size / statistics.median(s), 1)
           for name, s in seconds.items()}
  best = max((name for name in rates if name != 'jax'), key=rates.get)
  result = {
      'model': args.model, 'backbone': backbone, 'parameters': parameters,
      'batch_size': args.batch_size, 'steps_per_window': steps, 'windows': args.windows,
      'images_per_sec': rates, 'compile_and_warmup_s': compile_s,
      'window_s': {name: [round(x, 3) for x in s] for name, s in seconds.items()},
      'torch_best': best, 'jax_micro_batches': micro_batches,
      'ratio_jax_over_torch_best': round(rates['jax'] / rates[best], 3),
      'jax_devices': jax.local_device_count(), 'torch': torch.__version__,
      'jax': jax.__version__, 'torch_threads': torch.get_num_threads(),
      'machine': machine.describe(),
      'env': {k: os.environ.get(k) for k in ('XLA_FLAGS', *malloc_env.SETTINGS)},
  }
  print(f'{args.model} {backbone or ""} batch {args.batch_size}: ' +
        ', '.join(f'{name} {rate} img/s' for name, rate in rates.items()) +
        f'; JAX ({micro_batches} micro-batches) / PyTorch best ({best}): '
        f'{result["ratio_jax_over_torch_best"]}')
  with open(args.output, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
