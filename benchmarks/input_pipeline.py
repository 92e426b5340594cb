"""Input pipeline alone: CIFAR-10 train batches as the trainer consumes them, in images/s.

    python benchmarks/input_pipeline.py --data_dir /tmp/tfds_data --batch_size 128 --output ip.json

Reads the split into memory (timed apart, as `load_s`), then draws `--batches` global batches
from `input_pipeline.train_batches` through `prefetch_to_device` onto the local devices, the
path the train loop takes; the first `--warmup` batches are not timed. Needs CIFAR-10
prepared in --data_dir (see docs/data.md, "CIFAR-10 without network").
"""
import argparse
import json
import time

from convae_jax import malloc_env

if __name__ == '__main__':
  malloc_env.ensure()  # As launch.py does (CONVAE_MALLOC_TUNING=0 measures without them).

import flax.jax_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from convae_jax import input_pipeline  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', default='cifar10')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--batches', type=int, default=2000)
  parser.add_argument('--warmup', type=int, default=50)
  parser.add_argument('--output', default='input_pipeline.json')
  args = parser.parse_args()
  input_pipeline.hide_accelerators_from_tensorflow()
  devices = jax.local_devices()

  start = time.perf_counter()
  split = input_pipeline.load_split(args.dataset, 'train', args.data_dir)
  load_s = time.perf_counter() - start
  batches = flax.jax_utils.prefetch_to_device(input_pipeline.train_batches(
      split, global_batch_size=args.batch_size, seed=0, start_step=0,
      num_local_devices=len(devices)), 2, devices)
  for _ in range(args.warmup):
    jax.block_until_ready(next(batches))
  start = time.perf_counter()
  for _ in range(args.batches):
    batch = next(batches)
  jax.block_until_ready(batch)
  seconds = time.perf_counter() - start
  result = {'dataset': args.dataset, 'batch_size': args.batch_size, 'batches': args.batches,
            'load_s': round(load_s, 2),
            'images_per_sec': round(args.batches * args.batch_size / seconds, 1)}
  print(f'input pipeline, {args.dataset} batch {args.batch_size}: '
        f'{result["images_per_sec"]} images/s (split loaded in {result["load_s"]} s)')
  with open(args.output, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
