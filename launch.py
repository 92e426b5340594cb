"""Trains and evaluates an autoencoder: `python launch.py --config configs/cifar.py --workdir DIR`.

Flags only; the work is in convae_jax.train.train_and_evaluate. Override any config value
with --config.KEY=VALUE, pick a variant with --config configs/cifar.py:NAME.

Several processes (hosts) train one run through JAX's distributed runtime: start the same
command on each with --coordinator_address=HOST0:PORT --num_processes=N --process_id=I, or
under SLURM's srun / Open MPI's mpirun (detected from their variables), or with --distributed
where JAX detects the cluster itself (Cloud TPU pod slices, Kubernetes). See README.md.

Exit codes: 0 done; 2 refused before training (bad flag or config, data missing, workdir busy
or holding another model's checkpoints, cluster not joined); 3 stopped on non-finite values;
75 stopped by SIGTERM/SIGINT after saving a checkpoint (launch again to resume).
"""
import logging as py_logging
import os
import re
import sys

if __name__ == '__main__':
  from convae_jax import malloc_env, xla_cpu_flags  # pylint: disable=g-import-not-at-top
  malloc_env.ensure()  # With CONVAE_MALLOC_TUNING=1: faster CPU steps (README.md, "Performance").
  xla_cpu_flags.apply()  # 512-bit vectors on AVX-512 CPUs; before any JAX backend starts.

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only feeds data: spare its banners.

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and pictures go.')
config_flags.DEFINE_config_file('config', 'configs/cifar.py', 'Experiment config file.',
                                lock_config=True)
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process runs: HOST:PORT of process 0, the same on every process.')
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: how many processes in all.')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process, 0..num_processes-1.')
flags.DEFINE_bool('distributed', None,
                  'Call jax.distributed.initialize() (JAX detects what the flags above leave '
                  'unset, e.g. on Cloud TPU pod slices). Default: only when one of the flags '
                  'above is given or SLURM/Open MPI/JAX_COORDINATOR_ADDRESS is detected; '
                  '--nodistributed never.')
flags.mark_flags_as_required(['workdir'])

EXIT_REFUSED = 2
EXIT_NON_FINITE = 3


def _fail(message: str, code: int):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv):
  """absl's parsing, but a bad flag or config override is one line and exit code 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()]
    # A config file that raised: its traceback's last line says why.
    _fail(lines[-1].strip() if 'Error whilst parsing config file' in str(e) else
          ' '.join(str(e).split()), EXIT_REFUSED)
  except (KeyError, AttributeError) as e:  # config_flags: an override of a key that isn't there.
    # The message starts with the key, quoted, then perhaps a "Did you mean" hint.
    match = re.search(r'[\w.]+', str(e.args[0]) if e.args else '')
    key = match.group(0) if match else str(e)
    flag = next((a.split('=')[0] for a in argv if a.split('=')[0].endswith(f'.{key}')), key)
    hint = re.search(r'Did you mean "([\w.]+)"', str(e.args[0]) if e.args else '')
    _fail(f'{flag}: no such key in the config; '
          + (f'did you mean {hint.group(1)}? ' if hint else '')
          + 'overrides can only set keys the config file defines', EXIT_REFUSED)


class _QuietOrbaxInfo(py_logging.Filter):
  """Orbax logs each save in a dozen INFO lines; keep its warnings and errors only."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}', EXIT_REFUSED)
  # Import after flag parsing so that --help stays fast.
  # pylint: disable=g-import-not-at-top
  from convae_jax import (checkpointing, config_checks, distributed, input_pipeline, preemption,
                          train, workdir)
  input_pipeline.hide_accelerators_from_tensorflow()
  try:  # Before anything starts a JAX backend.
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           force=FLAGS.distributed)
  except distributed.ClusterError as e:
    _fail(str(e), EXIT_REFUSED)
  logging.get_absl_handler().addFilter(_QuietOrbaxInfo())
  logging.info('XLA_FLAGS: %s', os.environ.get('XLA_FLAGS', '(none)'))
  logging.info('Config:\n%s', FLAGS.config)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_checks.ConfigError, input_pipeline.DatasetUnavailableError,
          workdir.WorkdirBusyError, checkpointing.IncompatibleCheckpointError) as e:
    _fail(str(e), EXIT_REFUSED)
  except FloatingPointError as e:
    _fail(str(e), EXIT_NON_FINITE)
  except preemption.Preempted as e:
    _fail(str(e), preemption.EXIT_CODE)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
