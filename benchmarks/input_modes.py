"""The two input modes side by side: the same `launch.py` run in_memory and streaming.

    python benchmarks/input_modes.py --data_dir /tmp/tfds --num_train_steps 1950 --output out.json
    python benchmarks/input_modes.py --table out.json     # the docs' table, from the JSON

Runs benchmarks/launch_run.py once per mode, one after the other (never at once: they would
share the cores), and keeps each run's training images/s, peak resident memory and final
evaluation.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import machine  # pylint: disable=wrong-import-position  (benchmarks/, beside this file)

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ('in_memory', 'streaming')


def table(record: dict) -> str:
  m = record['machine']
  kind = 'AVX-512' if m.get('avx512') else 'AVX2, no AVX-512'
  rows = ['| input mode | test PSNR (dB) | test SSIM | peak memory (RSS, MiB) | train images/s | '
          'steps | data | machine |', '|---|---|---|---|---|---|---|---|']
  for mode in MODES:
    run = record['runs'][mode]
    rows.append(f"| `{mode}` | {run['final_eval']['eval/psnr']:.2f} | "
                f"{run['final_eval']['eval/ssim']:.4f} | {run['peak_rss_mib']:,} | "
                f"{run['images_per_sec']:,.0f} | {run['num_train_steps']:,} of "
                f"{run['batch_size']} | {record['data']} | "
                f"{m.get('cpu', '?')}, {kind}, {m.get('cores', '?')} cores, {m.get('date', '?')} |")
  return '\n'.join(rows) + f"\n\nCommand: `{m.get('command', '?')}`"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/cifar.py')
  parser.add_argument('--data_dir')
  parser.add_argument('--num_train_steps', type=int, default=1950)
  parser.add_argument('--data', default='CIFAR-10 (JPEG copy, imported with '
                      'convae_jax.datasets.import_cifar10)', help='What the data is, for the table.')
  parser.add_argument('--output', default='input_modes.json')
  parser.add_argument('--table', help='Print the table of this JSON file and exit.')
  args = parser.parse_args()
  if args.table:
    with open(args.table, encoding='utf-8') as f:
      print(table(json.load(f)))
    return
  if not args.data_dir:
    sys.exit('error: --data_dir is required to run (or pass --table FILE)')
  runs = {}
  for mode in MODES:
    with tempfile.NamedTemporaryFile(suffix='.json') as out:
      subprocess.run([sys.executable, os.path.join(HERE, 'launch_run.py'), '--config',
                      args.config, '--data_dir', args.data_dir, '--num_train_steps',
                      str(args.num_train_steps), f'--extra=--config.input_mode={mode}',
                      '--output', out.name], check=True)
      with open(out.name, encoding='utf-8') as f:
        runs[mode] = json.load(f)
  record = {'config': args.config, 'data': args.data, 'runs': runs,
            'machine': machine.describe()}
  with open(args.output, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=2)
  print(table(record))


if __name__ == '__main__':
  main()
