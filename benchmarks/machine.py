"""What a benchmark ran on and how, written into its JSON: figures compare only within one
machine kind (docs/performance.md). Run as a script, prints this machine's record (without
the command), which tools/keep_run.sh keeps beside a training run.
"""
import datetime
import json
import os
import platform
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from convae_jax import xla_cpu_flags


def cpu_model(cpuinfo: str = xla_cpu_flags.CPUINFO) -> str:
  try:
    with open(cpuinfo, encoding='utf-8') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
  except OSError:
    names = []
  return names[0] if names else platform.processor() or platform.machine()


def describe() -> dict:
  """The machine (CPU model, AVX-512 or not, cores), the date and the command line (the
  script's path from the repository root)."""
  return {'cpu': cpu_model(), 'avx512': xla_cpu_flags.cpu_has_avx512(),
          'cores': os.cpu_count(), 'date': datetime.date.today().isoformat(),
          'command': ' '.join(['python', os.path.relpath(os.path.abspath(sys.argv[0]), REPO),
                               *sys.argv[1:]])}


def label(machine: dict) -> str:
  """One line naming a `describe()` record's machine kind, for tables."""
  kind = 'AVX-512' if machine.get('avx512') else 'AVX2, no AVX-512'
  return (f"{machine.get('cpu', '?')}, {kind}, {machine.get('cores', '?')} cores, "
          f"{machine.get('date', '?')}")


if __name__ == '__main__':
  record = describe()
  del record['command']
  print(json.dumps(record))
