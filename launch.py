"""Trains and evaluates an autoencoder: `python launch.py --config configs/cifar.py --workdir DIR`.

Flags only; the work is in convae_jax.train.train_and_evaluate. Override any config value
with --config.KEY=VALUE, pick a variant with --config configs/cifar.py:NAME.
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


class _QuietOrbaxInfo(py_logging.Filter):
  """Orbax logs each save in a dozen INFO lines; keep its warnings and errors only."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Import after flag parsing so that --help stays fast.
  from convae_jax import config_checks, input_pipeline, train  # pylint: disable=g-import-not-at-top
  input_pipeline.hide_accelerators_from_tensorflow()
  logging.get_absl_handler().addFilter(_QuietOrbaxInfo())
  logging.info('Config:\n%s', FLAGS.config)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_checks.ConfigError, input_pipeline.DatasetUnavailableError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
