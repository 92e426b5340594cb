"""Training from the command line: `python launch.py ...` and `convae train ...` run this.

    python launch.py --config configs/cifar.py --workdir DIR      (or: convae train ...)

  See a config's keys:  --config configs/cifar.py:vae --print_config
  Override any key:     --config.KEY=VALUE, nested too: --config.model.backbone.features="(32, 64)"
  Pick a preset:        --config configs/cifar.py:NAME, NAME one of its PRESETS

Flags only; the work is in convae_jax.train.train_and_evaluate. Several processes (hosts)
train one run through JAX's distributed runtime: start the same command on each with
--coordinator_address=HOST0:PORT --num_processes=N --process_id=I, or under SLURM's srun /
Open MPI's mpirun (detected from their variables), or with --distributed where JAX detects
the cluster itself (Cloud TPU pod slices, Kubernetes). See docs/several_hosts.md.

Exit codes: 0 done (or nothing left to do); 2 refused before anything was written (bad flag,
config, path, dataset or split, data missing, workdir busy or holding another model's
checkpoints, cluster not joined); 3 stopped on non-finite values; 75 stopped by
SIGTERM/SIGINT after saving a checkpoint (launch again to resume).
"""
import ast
import importlib.util
import os
import re
import sys
import textwrap

# Light imports only: JAX must not start before `run` has set its flags.
from absl import app, flags
from ml_collections import config_flags

from convae_jax import config_file, errors, logs


def _default_config() -> str:
  """configs/cifar.py of this checkout (or installation), wherever the command runs from."""
  spec = importlib.util.find_spec('configs')
  if spec and spec.origin and os.path.exists(os.path.join(os.path.dirname(spec.origin), 'cifar.py')):
    return os.path.join(os.path.dirname(spec.origin), 'cifar.py')
  return 'configs/cifar.py'


def _presets(path: str) -> list[str]:
  """The names in the PRESETS dict of config file `path`, read without running it: --help
  stays fast and lists what the file defines, never a copy."""
  try:
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read())
  except (OSError, SyntaxError, ValueError):
    return []
  for node in tree.body:
    if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and
        any(isinstance(t, ast.Name) and t.id == 'PRESETS' for t in node.targets)):
      return [k.value for k in node.value.keys
              if isinstance(k, ast.Constant) and isinstance(k.value, str)]
  return []


HELP_FLAGS = ('--help', '-h', '-?', '--helpshort', '--helpfull')

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and pictures go (required).')
# No default here: config_flags would load it, and apply the overrides to it, at import.
config_flags.DEFINE_config_file('config', None,
                                'Experiment config file, PATH or PATH:PRESET (default: '
                                'configs/cifar.py); override its keys with --config.KEY=VALUE.',
                                lock_config=True)
flags.DEFINE_bool('print_config', False,
                  'Print the config (every key and value, overrides applied) and exit.')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process runs: HOST:PORT of process 0, the same on every process.')
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: how many processes in all.')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process, 0..num_processes-1.')
flags.DEFINE_bool('distributed', None,
                  'Call jax.distributed.initialize() (JAX detects what the flags above leave '
                  'unset, e.g. on Cloud TPU pod slices). Default: only when one of the flags '
                  'above is given or SLURM/Open MPI/JAX_COORDINATOR_ADDRESS is detected; '
                  '--nodistributed never.')

EXIT_NON_FINITE = 3


def _config_specs(argv) -> list[str]:
  """The values of every --config in `argv` (absl keeps the last)."""
  specs = []
  for i, arg in enumerate(argv[1:], 1):
    if arg == '--':
      break
    if arg.startswith('--config='):
      specs.append(arg.partition('=')[2])
    elif arg == '--config':
      specs.append(argv[i + 1] if i + 1 < len(argv) else '')
  return specs


def _print_help() -> None:
  presets = _presets(_default_config())
  listed = textwrap.fill(', '.join(presets), 92, initial_indent=' ' * 24,
                         subsequent_indent=' ' * 24)
  print(__doc__.replace('NAME one of its PRESETS', 'NAME one of:\n' + listed) if presets
        else __doc__)
  # The default is chosen at parse time (the help text says which), not absl's None.
  FLAGS['config'].default_as_str = None
  print(FLAGS.module_help(sys.modules[__name__]))
  sys.exit(0)  # absl's own --help exits 1.


def parse_flags(argv):
  """absl's parsing, but a bad flag, config file or override is one line and exit code 2."""
  args = argv[1:argv.index('--')] if '--' in argv else argv[1:]
  if any(arg in HELP_FLAGS for arg in args):
    _print_help()
  specs = _config_specs(argv)
  if not specs:
    specs = [_default_config()]
    argv = argv[:1] + ['--config', specs[0]] + argv[1:]
  try:
    for spec in specs:
      config_file.load(spec)  # What config_flags would turn into a long traceback.
    return FLAGS(argv)
  except errors.UserError as e:
    errors.refuse(e)
  except flags.Error as e:
    errors.refuse(errors.UserError(f'{errors.one_line(e)} (see the flags with --help and the '
                                   'config\'s keys and values with --print_config)'))
  except (KeyError, AttributeError) as e:  # config_flags: an override of a key that isn't there.
    # The message starts with the key, quoted, then perhaps a "Did you mean" hint.
    match = re.search(r'[\w.]+', str(e.args[0]) if e.args else '')
    key = match.group(0) if match else str(e)
    flag = next((a.split('=')[0] for a in argv if a.split('=')[0].endswith(f'.{key}')), key)
    hint = re.search(r'Did you mean "([\w.]+)"', str(e.args[0]) if e.args else '')
    errors.refuse(errors.UserError(
        f'{flag}: no such key in the config; '
        + (f'did you mean {hint.group(1)}? ' if hint else '')
        + 'see the keys with --print_config'))


def _train(argv):
  if len(argv) > 1:
    errors.refuse(errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}; flags take '
                                   'the form --name=value'))
  if FLAGS.print_config:
    print(FLAGS.config)
    return
  if FLAGS.workdir is None:
    errors.refuse(errors.UserError('--workdir is required: the folder for checkpoints, '
                                   'metrics and pictures, e.g. --workdir runs/cae'))
  # Import after flag parsing so that --help stays fast.
  # pylint: disable=g-import-not-at-top
  from convae_jax import distributed, input_pipeline, preemption, prior_train, train
  logs.quiet_libraries()
  try:
    input_pipeline.hide_accelerators_from_tensorflow()
    # Before anything starts a JAX backend.
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           force=FLAGS.distributed)
    # A config naming a first stage (configs/cifar_prior.py) trains a prior over its codes.
    trainer = prior_train if 'autoencoder' in FLAGS.config else train
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.UserError as e:
    errors.refuse(e)
  except FloatingPointError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(EXIT_NON_FINITE)
  except preemption.Preempted as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_CODE)


def run(argv: list[str] | None = None) -> None:
  """Parses `argv` (default sys.argv) as the flags above and trains; exits with the code."""
  from convae_jax import malloc_env, xla_cpu_flags  # pylint: disable=g-import-not-at-top
  malloc_env.ensure()  # Unless CONVAE_MALLOC_TUNING=0: faster CPU steps (docs/performance.md).
  xla_cpu_flags.apply()  # 512-bit vectors on AVX-512 CPUs; before any JAX backend starts.
  logs.quiet_tensorflow()
  app.run(_train, argv=argv, flags_parser=parse_flags)
