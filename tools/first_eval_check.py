"""Reruns a results row's command, stops it after its first evaluation, compares that evaluation.

    python tools/first_eval_check.py results/quality/resae --workdir /tmp/recheck -- \
        --config configs/cifar.py:resae --config.data_dir=/tmp/tfds --config.eval_every_steps=500

REFERENCE is the kept run (its metrics.jsonl, as tools/keep_run.sh keeps it). Launches
launch.py with the arguments after `--` in a fresh --workdir, kills it as soon as its first
evaluation is in metrics.jsonl, and compares each of that evaluation's figures with the
reference's at the same step, bitwise (JSON keeps a float32 exactly). Only meaningful with
the device count (and XLA_FLAGS) the reference ran with, on its machine kind. Writes
WORKDIR/first_eval_check.json; exit code 0 when every figure is equal.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # Where launch.py is.
EVAL_PREFIXES = ('eval/', 'eval_raw/')


def evaluations(metrics_path: str) -> list[dict]:
  """The metrics.jsonl lines that carry evaluation figures, with their step."""
  if not os.path.isfile(metrics_path):
    return []
  with open(metrics_path, encoding='utf-8') as f:
    lines = [json.loads(line) for line in f if line.strip().endswith('}')]
  evals = []
  for line in lines:
    figures = {k: v for k, v in line.items() if k.startswith(EVAL_PREFIXES)}
    if figures:
      evals.append({'step': line['step'], **figures})
  return evals


def compare(reference: list[dict], rerun: dict) -> dict:
  """The rerun's first evaluation against the reference's evaluation at its step."""
  at_step = [e for e in reference if e['step'] == rerun['step']]
  if not at_step:
    return {'step': rerun['step'], 'equal': False,
            'problem': f'the reference has no evaluation at step {rerun["step"]}'}
  expected = at_step[0]
  differing = {k: {'reference': expected.get(k), 'rerun': v} for k, v in rerun.items()
               if k != 'step' and expected.get(k) != v}
  missing = sorted(set(expected) - set(rerun))
  return {'step': rerun['step'], 'figures': len(rerun) - 1, 'differing': differing,
          'missing': missing, 'equal': not differing and not missing}


def rerun_first_evaluation(args: list[str], workdir: str, timeout_s: float) -> dict | None:
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  with open(os.path.join(workdir, 'launch.log'), 'w', encoding='utf-8') as log:
    process = subprocess.Popen([sys.executable, os.path.join(REPO, 'launch.py'),
                                '--workdir', workdir] + args,
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    try:
      while time.monotonic() < deadline:
        found = evaluations(metrics_path)
        if found:
          return found[0]
        if process.poll() is not None:
          return (evaluations(metrics_path) or [None])[0]
        time.sleep(1.0)
      return None
    finally:
      if process.poll() is None:
        process.kill()
        process.wait()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('reference', help='a kept run: a folder with metrics.jsonl')
  parser.add_argument('--workdir', required=True, help='a new, empty folder for the rerun')
  parser.add_argument('--timeout_s', type=float, default=3600.0)
  argv = sys.argv[1:]
  split = argv.index('--') if '--' in argv else len(argv)
  flags = parser.parse_args(argv[:split])
  flags.launch_args = argv[split + 1:]  # The row's launch.py arguments.
  reference = evaluations(os.path.join(flags.reference, 'metrics.jsonl'))
  if not reference:
    parser.exit(2, f'error: {flags.reference}/metrics.jsonl has no evaluation; pass the folder '
                'of a kept run (tools/keep_run.sh)\n')
  if os.path.exists(flags.workdir) and os.listdir(flags.workdir):
    parser.exit(2, f'error: --workdir {flags.workdir} is not empty; pass a new folder so '
                'nothing is resumed or overwritten\n')
  os.makedirs(flags.workdir, exist_ok=True)
  first = rerun_first_evaluation(flags.launch_args, flags.workdir, flags.timeout_s)
  if first is None:
    report = {'equal': False, 'problem': f'no evaluation within {flags.timeout_s:.0f} s; see '
              f'{flags.workdir}/launch.log'}
  else:
    report = compare(reference, first)
  report['command'] = ' '.join(['launch.py'] + flags.launch_args)
  with open(os.path.join(flags.workdir, 'first_eval_check.json'), 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report, indent=2))
  sys.exit(0 if report['equal'] else 1)


if __name__ == '__main__':
  main()
