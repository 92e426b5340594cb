"""The whole `launch.py` run: training images/s and peak memory, as a user runs it.

    python benchmarks/launch_run.py --data_dir /tmp/tfds_data --num_train_steps 1200 --output run.json

Starts `python launch.py --config CONFIG` in a fresh workdir (data, logging, checkpoints and
evaluations included, at the config's intervals unless overridden by --extra flags) and reads
back the `steps_per_sec` the run reported every `log_every_steps`. The first report holds
compilation and is dropped; the median of the rest gives training images/s. Also: the wall
time of the whole command, its peak resident memory (ru_maxrss of the child) and its last
evaluation's figures.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import machine  # pylint: disable=wrong-import-position  (benchmarks/, beside this file)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/cifar.py')
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--num_train_steps', type=int, default=1200)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--extra', action='append', default=[],
                      help='One more --config.KEY=VALUE flag (repeat: --extra=A --extra=B).')
  parser.add_argument('--malloc_tuning', default='1', choices=['0', '1'],
                      help="CONVAE_MALLOC_TUNING for the run (1: launch.py's default).")
  parser.add_argument('--output', default='launch_run.json')
  args = parser.parse_args()

  workdir = tempfile.mkdtemp(prefix='launch_run_')
  command = [sys.executable, 'launch.py', '--config', args.config, '--workdir', workdir,
             f'--config.data_dir={args.data_dir}', f'--config.batch_size={args.batch_size}',
             f'--config.num_train_steps={args.num_train_steps}', *args.extra]
  start = time.perf_counter()
  env = {**os.environ, 'CONVAE_MALLOC_TUNING': args.malloc_tuning}
  subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL, env=env)
  wall_s = time.perf_counter() - start
  peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    lines = [json.loads(line) for line in f]
  rates = [line['steps_per_sec'] for line in lines if 'steps_per_sec' in line]
  evals = [line for line in lines if any(k.startswith('eval/') for k in line)]
  shutil.rmtree(workdir)
  if len(rates) < 2:
    sys.exit('error: fewer than 2 progress reports; raise --num_train_steps')
  result = {'config': args.config, 'batch_size': args.batch_size,
            'num_train_steps': args.num_train_steps, 'extra': args.extra,
            'malloc_tuning': args.malloc_tuning,
            'images_per_sec': round(statistics.median(rates[1:]) * args.batch_size, 1),
            'reports': [round(r * args.batch_size, 1) for r in rates],
            'wall_s': round(wall_s, 1), 'peak_rss_mib': round(peak_mib),
            'final_eval': evals[-1] if evals else None,
            'machine': machine.describe()}
  print(f'launch.py {args.config}, {args.num_train_steps} steps of {args.batch_size}: '
        f'{result["images_per_sec"]} images/s training, {result["wall_s"]} s wall, '
        f'peak RSS {result["peak_rss_mib"]} MiB')
  with open(args.output, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
