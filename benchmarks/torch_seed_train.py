"""Trains the PyTorch seed autoencoder on CIFAR-10: the reference the JAX trainer is compared to.

Reads CIFAR-10 from an already prepared TFDS directory (no download), trains with Adam
(lr 1e-3) on the MSE for `--epochs` epochs of 50000 // batch_size steps (the last partial
batch is dropped, as in the JAX trainer), then reports the test split's mean per-image MSE
and PSNR on [0, 1] pixels, and the training throughput. Run from anywhere (needs torch):

  python benchmarks/torch_seed_train.py --data_dir /tmp/tfds_data --epochs 1 --output out.json
"""
import argparse
import json
import pathlib
import time

from convae_jax import malloc_env

if __name__ == '__main__':
  malloc_env.ensure()  # PyTorch's best CPU setting includes them too (docs/performance.md).

import numpy as np  # pylint: disable=wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position

import machine  # pylint: disable=wrong-import-position  (benchmarks/, beside this file)
import torch_seed  # pylint: disable=wrong-import-position

_EVAL_BATCH = 1000


def load_split(data_dir: str, split: str) -> torch.Tensor:
  """The split's images as a uint8 tensor, NCHW in channels_last memory layout."""
  data = tfds.as_numpy(tfds.load('cifar10', split=split, data_dir=data_dir, download=False,
                                 batch_size=-1))
  # NHWC numpy viewed as NCHW is exactly channels_last; no copy needed.
  return torch.from_numpy(np.ascontiguousarray(data['image'])).permute(0, 3, 1, 2)


def to_float(images: torch.Tensor) -> torch.Tensor:
  return images.float().div_(255.0).contiguous(memory_format=torch.channels_last)


def train(model, images, epochs, batch_size, seed, mode) -> tuple[float, float | None]:
  """Trains in place; returns the training throughput in images per second over all epochs
  (torch.compile's compilation, in the first steps, included) and over the epochs after the
  first (None for one epoch): the steady rate, as launch_run.py's median leaves out the
  report that holds compilation."""
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  generator = torch.Generator().manual_seed(seed)
  steps = len(images) // batch_size

  def one_step(x):
    loss = torch.nn.functional.mse_loss(model(x), x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()

  step_fn = torch.compile(one_step) if mode == 'compile' else one_step
  model.train()
  start = first_epoch_end = time.perf_counter()
  for epoch in range(epochs):
    order = torch.randperm(len(images), generator=generator)
    total = torch.zeros(())
    for step in range(steps):
      total += step_fn(to_float(images[order[step * batch_size:(step + 1) * batch_size]]))
    print(f'epoch {epoch + 1}/{epochs}: train mse {total.item() / steps:.6f} '
          f'({time.perf_counter() - start:.1f}s)', flush=True)
    if epoch == 0:
      first_epoch_end = time.perf_counter()
  end = time.perf_counter()
  steady = (epochs - 1) * steps * batch_size / (end - first_epoch_end) if epochs > 1 else None
  return epochs * steps * batch_size / (end - start), steady


@torch.no_grad()
def evaluate(model, images) -> tuple[float, float]:
  """Mean over images of the per-image MSE and of the per-image PSNR (peak 1)."""
  model.eval()
  mses = []
  for start in range(0, len(images), _EVAL_BATCH):
    x = to_float(images[start:start + _EVAL_BATCH])
    mses.append(torch.mean(torch.square(model(x) - x), dim=(1, 2, 3)).double())
  mse = torch.cat(mses)
  return mse.mean().item(), (10.0 * torch.log10(1.0 / mse)).mean().item()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir holding cifar10.')
  parser.add_argument('--epochs', type=int, default=1)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--mode', default='channels_last', choices=['channels_last', 'compile'],
                      help='eager channels-last, or torch.compile of the whole step on it '
                      '(compare_torch.py times both; the faster is PyTorch\'s best)')
  parser.add_argument('--output', required=True, help='Path of the JSON results file.')
  args = parser.parse_args()

  train_images = load_split(args.data_dir, 'train')
  test_images = load_split(args.data_dir, 'test')
  torch.manual_seed(args.seed)
  # channels_last: the same function, about twice as fast on CPU for this model.
  model = torch_seed.SeedAutoencoder().to(memory_format=torch.channels_last)
  images_per_sec, steady_images_per_sec = train(
      model, train_images, args.epochs, args.batch_size, args.seed, args.mode)
  test_mse, test_psnr = evaluate(model, test_images)

  results = {'epochs': args.epochs, 'batch_size': args.batch_size, 'seed': args.seed,
             'mode': args.mode,
             'test_mse': test_mse, 'test_psnr': test_psnr,
             'train_images_per_sec': images_per_sec,
             'steady_images_per_sec': steady_images_per_sec, 'torch_version': torch.__version__,
             'num_threads': torch.get_num_threads(), 'machine': machine.describe(),
             'malloc_settings': malloc_env.describe()}
  print(json.dumps(results, indent=2))
  output = pathlib.Path(args.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  main()
