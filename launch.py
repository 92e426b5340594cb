"""Trains and evaluates an autoencoder: `python launch.py --config configs/cifar.py --workdir DIR`.

Flags only; the work is in convae_jax.train.train_and_evaluate. Override any config value
with --config.KEY=VALUE, pick a variant with --config configs/cifar.py:NAME.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and pictures go.')
config_flags.DEFINE_config_file('config', 'configs/cifar.py', 'Experiment config file.',
                                lock_config=True)
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Import after flag parsing so that --help stays fast.
  from convae_jax import config_checks, input_pipeline, train  # pylint: disable=g-import-not-at-top
  input_pipeline.hide_accelerators_from_tensorflow()
  logging.info('Config:\n%s', FLAGS.config)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_checks.ConfigError, input_pipeline.DatasetUnavailableError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
