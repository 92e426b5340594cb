"""Trains and evaluates an autoencoder: `python launch.py --config configs/cifar.py --workdir DIR`.

Flags only; the work is in convae_jax.train.train_and_evaluate. Override any config value
with --config.KEY=VALUE, pick a variant with --config configs/cifar.py:NAME.

Exit codes: 0 done; 2 refused before training (bad flag or config, data missing, workdir busy
or holding another model's checkpoints); 3 stopped on non-finite values; 75 stopped by
SIGTERM/SIGINT after saving a checkpoint (launch again to resume).
"""
import logging as py_logging
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only feeds data: spare its banners.

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and pictures go.')
config_flags.DEFINE_config_file('config', 'configs/cifar.py', 'Experiment config file.',
                                lock_config=True)
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
    key = str(e).strip('"\'')
    flag = next((a.split('=')[0] for a in argv if a.split('=')[0].endswith(f'.{key}')), key)
    _fail(f'{flag}: no such key in the config; overrides can only set keys the config file '
          'defines', EXIT_REFUSED)


class _QuietOrbaxInfo(py_logging.Filter):
  """Orbax logs each save in a dozen INFO lines; keep its warnings and errors only."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}', EXIT_REFUSED)
  # Import after flag parsing so that --help stays fast.
  # pylint: disable=g-import-not-at-top
  from convae_jax import checkpointing, config_checks, input_pipeline, preemption, train, workdir
  input_pipeline.hide_accelerators_from_tensorflow()
  logging.get_absl_handler().addFilter(_QuietOrbaxInfo())
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
