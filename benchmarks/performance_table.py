"""The performance page's table, generated from benchmark JSON files (docs/performance.md).

    python benchmarks/performance_table.py benchmarks/results/2026-12-02_zen4_*.json

Reads what compare_torch.py, launch_run.py, torch_seed_train.py and train_step.py wrote (their
`machine` entry included) and prints one markdown row per measurement. A launch_run.py row is
set against the torch_seed_train.py file (PyTorch's whole run) and the train_step.py file for
the same model among the files given.
"""
import argparse
import json
import os

import machine  # pylint: disable=wrong-import-position  (benchmarks/, beside this file)

HEADER = ('| what is timed | model | JAX (this repo), images/s | PyTorch, best setting, '
          'images/s | JAX / PyTorch | data | machine | command |\n'
          '|---|---|---|---|---|---|---|---|')
RANDOM = 'random images, made by the script'
CIFAR10 = 'CIFAR-10 (JPEG copy, imported with convae_jax.datasets.import_cifar10)'


def _machine(record: dict) -> str:
  return machine.label(record.get('machine', {}))


def _command(record: dict) -> str:
  return f"`{record.get('machine', {}).get('command', '?')}`"


def _model(record: dict) -> str:
  widths = record.get('backbone', {}).get('widths')
  return record['model'] + (f" (widths {','.join(map(str, widths))})" if widths else '')


def _code(record: dict) -> str:
  """The code measured, where the file says (an A/B against another commit)."""
  return f"; code: {record['code']}" if 'code' in record else ''


def rows(records: dict[str, dict]) -> list[str]:
  by_kind = {'compare': [], 'launch': [], 'torch_run': [], 'step': []}
  for name, record in records.items():
    if 'torch_best' in record:
      by_kind['compare'].append(record)
    elif 'reports' in record:
      by_kind['launch'].append(record)
    elif 'train_images_per_sec' in record:
      by_kind['torch_run'].append(record)
    elif 'results' in record:
      by_kind['step'].append(record)
    else:
      raise SystemExit(f'performance_table.py: {name} is not a benchmark result it knows')
  out = []
  for r in by_kind['compare']:
    rates = r['images_per_sec']
    best = r['torch_best']
    out.append(f"| train step, {r['parameters']:,} parameters, batch {r['batch_size']}, "
               f"{r['jax_micro_batches']} micro-batches; in one process, windows alternating, "
               f"median of {r['windows']}{_code(r)} | {_model(r)} | {rates['jax']:,.0f} | "
               f"{rates[best]:,.0f} ({best.removeprefix('torch_')}) | "
               f"**{r['ratio_jax_over_torch_best']:.2f}** | {RANDOM} | {_machine(r)} | "
               f"{_command(r)} |")
  # PyTorch's whole run in its fastest mode among the files; its steady rate where it has one.
  rate = lambda run: run.get('steady_images_per_sec') or run['train_images_per_sec']
  torch_run = max(by_kind['torch_run'], key=rate, default=None)
  steps = {row['model']: row['images_per_sec'] for s in by_kind['step'] for row in s['results']}
  for r in by_kind['launch']:
    theirs = rate(torch_run) if torch_run else None
    mode = torch_run.get('mode', 'channels_last').replace('_', '-') if torch_run else None
    epochs = torch_run and (f"epochs 2-{torch_run['epochs']} of {torch_run['epochs']}"
                            if torch_run.get('steady_images_per_sec') else
                            f"{torch_run['epochs']} epochs")
    step = steps.get('cae')
    against_step = f'; {r["images_per_sec"] / step:.2f}x of our step alone ({step:,.0f})' if (
        step) else ''
    out.append(f"| whole `launch.py` run, {r['num_train_steps']:,} steps of {r['batch_size']} "
               f"(median of its progress reports{against_step}) | cae | "
               f"{r['images_per_sec']:,.0f} | "
               + (f"{theirs:,.0f} (`torch_seed_train.py`, {mode}, {epochs}) | "
                  f"**{r['images_per_sec'] / theirs:.2f}** |" if theirs else
                  'not measured | |')
               + f" {CIFAR10} | {_machine(r)} | {_command(r)}"
               + (f"; {_command(torch_run)}" if torch_run else '') + ' |')
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('files', nargs='+')
  args = parser.parse_args()
  records = {}
  for path in args.files:
    with open(path, encoding='utf-8') as f:
      records[os.path.basename(path)] = json.load(f)
  print(HEADER)
  print('\n'.join(rows(records)))


if __name__ == '__main__':
  main()
