"""Every mistake a user can make is refused in one line: `error: ...`, exit code 2, no
traceback, and nothing written. For launch.py, `python -m convae_jax.cli` and the CIFAR-10
import; fresh processes only where the command line itself is what is checked."""
import ast
import concurrent.futures
import os
import re
import shlex

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import cifar
from conftest import run_cli, run_launch, tiny
from convae_jax import errors, paths, train
from convae_jax.datasets import import_cifar10


def _assert_refused(code, stderr):
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert code == 2, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-2000:]
  assert [line for line in lines if line.startswith('error: ')] == lines[-1:], stderr[-2000:]
  return lines[-1]


@pytest.fixture(scope='module')
def user_files(tmp_path_factory):
  """A regular file, a config that raises, one without get_config, one returning a dict."""
  folder = tmp_path_factory.mktemp('user_files')
  (folder / 'a_file').write_text('not a folder')
  (folder / 'raises.py').write_text('raise RuntimeError("broken on purpose")\n')
  (folder / 'no_get_config.py').write_text('CONFIG = {}\n')
  (folder / 'returns_dict.py').write_text('def get_config():\n  return {"batch_size": 8}\n')
  (folder / 'notes.txt').write_text('a config file must be Python\n')
  return folder


# launch.py as a user runs it: the four examples of the issue and the command-line mistakes.
# {data_dir}, {files} and {workdir} are filled in by the test.
LAUNCH_CASES = {
    'config file missing': (['--config', 'configs/cifr.py'],
                            r'error: --config configs/cifr.py: no such file; did you mean '
                            r'configs/cifar.py\?'),
    'config file raises': (['--config', '{files}/raises.py'],
                           r'error: --config .*raises.py failed to load \(RuntimeError: broken '
                           r'on purpose\); fix the file'),
    'no get_config': (['--config', '{files}/no_get_config.py'], r'defines no get_config\(\)'),
    'get_config returns a dict': (['--config', '{files}/returns_dict.py'],
                                  r'returned dict, not an ml_collections.ConfigDict'),
    'config not python': (['--config', '{files}/notes.txt'], r'is not a Python file'),
    'unknown variant': (['--config', 'configs/cifar.py:nope'],
                        r"error: --config configs/cifar.py:nope: .*unknown preset 'nope'; known: "
                        r'cae'),
    'unknown split': (['--config.train_split=nope'],
                      r"error: config.train_split='nope': Unknown split nope; dataset "
                      r"'photo_patches' has splits test, train"),
    'negative grid': (['--config.num_grid_images=-1'],
                      r'error: config.num_grid_images=-1: must be 0 or more'),
    'EMA decay out of range': (['--config.ema_decay=1.5'],
                               r'error: config.ema_decay=1.5: must lie in \[0, 1\)'),
    'workdir is a file': (['--workdir', '{files}/a_file'],
                          r'error: --workdir .*a_file is a file, not a folder'),
    'unknown key': (['--config.batch_sise=8'],
                    r'error: --config.batch_sise: no such key in the config; .*--print_config'),
    'bad value type': (['--config.batch_size=eight'],
                       r'error: flag --config.batch_size=eight: invalid literal for int'),
    'stray argument': (['train'], r'error: unexpected arguments: train'),
    'unknown flag': (['--workdri=x'], r'error: Unknown command line flag \'workdri\''),
}


@pytest.fixture(scope='module')
def launch_refusals(tmp_path_factory, photo_data_dir, user_files):
  """{case: (workdir, result)} of every LAUNCH_CASES command, run two at a time (each fresh
  process spends most of its time importing, on one core)."""
  root = tmp_path_factory.mktemp('refusals')
  commands = {}
  for i, (case, (extra, _)) in enumerate(sorted(LAUNCH_CASES.items())):
    workdir = root / f'run{i}'
    commands[case] = (workdir, ['--config', 'configs/photos.py', '--workdir', str(workdir),
                                f'--config.data_dir={photo_data_dir}'] +
                      [a.format(files=user_files) for a in extra])
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    results = dict(zip(commands, pool.map(lambda c: run_launch(c[1]), commands.values())))
  return {case: (commands[case][0], result) for case, result in results.items()}


@pytest.mark.slow
@pytest.mark.parametrize('case', sorted(LAUNCH_CASES))
def test_launch_refuses_in_one_line(case, launch_refusals, user_files):
  _, message = LAUNCH_CASES[case]
  workdir, result = launch_refusals[case]
  line = _assert_refused(result.returncode, result.stderr)
  assert re.search(message, line), line
  assert not workdir.exists()  # Nothing written.
  assert (user_files / 'a_file').read_text() == 'not a folder'


@pytest.mark.slow
def test_launch_without_workdir_help_and_print_config(tmp_path):
  result = run_launch(['--config', 'configs/photos.py'])
  line = _assert_refused(result.returncode, result.stderr)
  assert line.startswith('error: --workdir is required')
  result = run_launch(['--help'])
  assert result.returncode == 0 and 'Traceback' not in result.stderr
  assert '--print_config' in result.stdout and '--config.KEY=VALUE' in result.stdout
  # Every preset of configs/cifar.py, one default for --config, and an example that works.
  listed = re.search(r'NAME one of:\n(.*?)\n\n', result.stdout, re.S).group(1)
  assert [name.strip() for name in listed.split(',')] == list(cifar.PRESETS)
  config_help = result.stdout.split('  --config:')[1].split('\n  --')[0]
  assert config_help.count('default') == 1 and 'default: configs/cifar.py' in ' '.join(
      config_help.split())
  example = shlex.split(result.stdout.split('nested too: ')[1].splitlines()[0])
  assert len(example) == 1 and example[0].startswith('--config.model.')
  result = run_launch([example[0], '--print_config'])
  assert result.returncode == 0, result.stderr[-2000:]
  key, value = example[0][len('--config.'):].split('=')
  expected = cifar.get_config()  # The default config, with the example applied.
  *parents, leaf = key.split('.')
  target = expected
  for parent in parents:
    target = target[parent]
  assert target[leaf] != ast.literal_eval(value)
  target[leaf] = ast.literal_eval(value)
  assert result.stdout.strip() == str(expected).strip()
  result = run_launch(['--config', 'configs/cifar.py:vae', '--config.model.bottleneck.beta=0.5',
                       '--print_config'])
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'beta: 0.5' in result.stdout and 'batch_size: 128' in result.stdout


# The trainer's own checks, called directly: (config overrides, workdir, message).
TRAIN_CASES = {
    'unknown split': ({'train_split': 'nope'}, None, r"config.train_split='nope': Unknown split"),
    'empty split': ({'eval_split': 'train[:0]'}, None,
                    r"config.eval_split='train\[:0\]' of dataset 'photo_patches' holds no "
                    'examples'),
    'bad slice': ({'eval_split': 'test[200%:]'}, None, r"config.eval_split='test\[200%:\]': "
                  'Error parsing split'),
    'unknown dataset': ({'dataset': 'cifar11'}, None,
                        r"config.dataset='cifar11' is not a TFDS dataset; did you mean cifar10"),
    'data_dir is a file': ({'data_dir': '{files}/a_file'}, None,
                           r'config.data_dir .*a_file is a file, not a folder'),
    'negative seed': ({'seed': -1}, None, r'config.seed=-1: must be 0 or more'),
    'negative profile': ({'profile_num_steps': -2}, None, r'config.profile_num_steps=-2'),
    'input range of one': ({'input_range': (0.0,)}, None, r'must be two numbers'),
    'micro batches': ({'micro_batches': 3}, None, r'config.micro_batches=3 does not divide'),
    'zero learning rate': ({'learning_rate': 0.0}, None, r'config.learning_rate=0.0'),
    'zero batch': ({'batch_size': 0}, None, r'config.batch_size=0: must be a positive'),
    'unknown model': ({'model.name': 'nope'}, None, r"config.model: unknown model.name 'nope'"),
    'zero width': ({'model.backbone.features': (0, 32)}, None,
                   r"config.model: model.backbone 'seed': features=\(0, 32\) must be one or more "
                   'positive'),
    'unknown part': ({'model.bottleneck.name': 'vqq'}, None,
                     r"config.model: unknown model.bottleneck.name 'vqq'; known: fsq, gaussian"),
    'input range reversed': ({'input_range': (1.0, 0.0)}, None, r'needs low < high'),
    'unknown schedule': ({'schedule': 'cosine'}, None, r"config.schedule='cosine': known "
                         'schedules are constant, warmup_cosine, warmup_linear, warmup_rsqrt'),
    'negative decay': ({'weight_decay': -0.1}, None, r'config.weight_decay=-0.1: must be 0 or '
                       'more'),
    'warm-up longer than the run': ({'warmup_steps': 10}, None,
                                    r'config.warmup_steps: a warm-up of 10 steps is not shorter '
                                    r'than the run \(4 steps\)'),
    'negative clipping': ({'grad_clip_norm': -1.0}, None, r'config.grad_clip_norm=-1.0: must be '
                          r'0 \(off\) or positive'),
    'EMA decay of one': ({'ema_decay': 1.0}, None, r'config.ema_decay=1.0: must lie in '
                         r'\[0, 1\) \(0 = off; e.g. 0.999\)'),
    'unknown dtype': ({'dtype': 'float16'}, None, r"config.dtype='float16': must be one of "
                      'float32, bfloat16'),
    'dtype in the model': ({'model.dtype': 'bfloat16'}, None, r'config.model: model.dtype: the '
                           r'precision is a trainer setting; set --config.dtype'),
    'accumulation not dividing the run': ({'accumulate_steps': 3}, None,
                                          r'config.num_train_steps=4 is not a whole number of '
                                          r'updates of config.accumulate_steps=3 steps'),
    'zero accumulation': ({'accumulate_steps': 0}, None, r'config.accumulate_steps=0: must be a '
                          'positive integer'),
    'workdir is a file': ({}, '{files}/a_file', r'--workdir .*a_file is a file, not a folder'),
    'workdir below a file': ({}, '{files}/a_file/run', r'--workdir .*a_file is a file, so no '
                             'folder can be made below it'),
    'empty workdir': ({}, '', r'--workdir is empty'),
}


@pytest.mark.parametrize('case', sorted(TRAIN_CASES))
def test_trainer_refuses_before_writing(case, tmp_path, photo_data_dir, user_files):
  from configs import photos  # pylint: disable=g-import-not-at-top
  overrides, workdir, message = TRAIN_CASES[case]
  config = tiny(photos.get_config(), data_dir=photo_data_dir)
  for key, value in overrides.items():
    if isinstance(value, str):
      value = value.format(files=user_files)
    *parents, last = key.split('.')
    target = config
    for parent in parents:
      target = target[parent]
    target[last] = value
  workdir = str(tmp_path / 'run') if workdir is None else workdir.format(files=user_files)
  with pytest.raises(errors.UserError) as refused:
    train.train_and_evaluate(config, workdir)
  assert re.search(message, errors.one_line(refused.value)), str(refused.value)
  assert not (tmp_path / 'run').exists()
  assert (user_files / 'a_file').read_text() == 'not a folder'


# The CLI, in this process. {workdir} is a trained cae, {tmp} a fresh folder.
CLI_CASES = {
    'no workdir': (['reconstruct', '--workdir', '{tmp}/nope', '{image}', '--output', '{tmp}/o'],
                   r'error: workdir .*nope does not exist'),
    'workdir without checkpoint': (['encode', '--workdir', '{tmp}', '{image}', '--output',
                                    '{tmp}/z.npz'], r'error: .* has no checkpoint in'),
    'missing step': (['reconstruct', '--workdir', '{workdir}', '--step', '7', '{image}',
                      '--output', '{tmp}/o'], r'error: .*no checkpoint at step 7; available'),
    'step not a number': (['reconstruct', '--workdir', '{workdir}', '--step', 'x', '{image}',
                           '--output', '{tmp}/o'], r"error: argument --step: invalid int"),
    'unknown mode': (['fit'], r'error: argument MODE: invalid choice'),
    'no mode': ([], r'error: the following arguments are required: MODE'),
    'no workdir flag': (['sample', '--output', '{tmp}/o'],
                        r'error: one of the arguments --workdir --pretrained is required'),
    'unknown split': (['evaluate', '--workdir', '{workdir}', '--split', 'nope'],
                      r"error: split='nope': Unknown split nope; dataset 'photo_patches'"),
    'unknown dataset': (['evaluate', '--workdir', '{workdir}', '--dataset', 'cifar11'],
                        r"error: dataset='cifar11' is not a TFDS dataset"),
    'data_dir is a file': (['evaluate', '--workdir', '{workdir}', '--data_dir', '{tmp}/file'],
                           r'error: data_dir .*file is a file, not a folder'),
    'zero batch': (['evaluate', '--workdir', '{workdir}', '--batch_size', '0'],
                   r'error: batch_size=0: must be 1 or more'),
    'output is a file': (['reconstruct', '--workdir', '{workdir}', '{image}', '--output',
                          '{tmp}/file'], r'error: --output .*file is a file, not a folder'),
    'nothing readable': (['reconstruct', '--workdir', '{workdir}', '{tmp}/file',
                          '--output', '{tmp}/o'], r'error: no readable image in .*file \(.*file: '
                         r'not an image Pillow can read\)'),
    'missing input': (['reconstruct', '--workdir', '{workdir}', '{tmp}/missing.png', '{image}',
                       '--output', '{tmp}/o'], r'error: .*missing.png: no such file or folder'),
    'missing input to encode': (['encode', '--workdir', '{workdir}', '{image}',
                                 '{tmp}/missing.png', '--output', '{tmp}/z.npz'],
                                r'error: .*missing.png: no such file or folder'),
    'cannot sample': (['sample', '--workdir', '{workdir}', '--output', '{tmp}/o'],
                      r"error: model 'seed\+identity\+mse' cannot sample"),
    'bad latents': (['decode', '--workdir', '{workdir}', '--latents', '{tmp}/file',
                     '--output', '{tmp}/o'], r'error: --latents .*file cannot be read'),
    'latents not npz': (['encode', '--workdir', '{workdir}', '{image}', '--output',
                         '{tmp}/z.txt'], r'error: --output .*z.txt: name the latents file'),
    'unknown module': (['evaluate', '--workdir', '{workdir}', '--module', 'no_such_module'],
                       r"error: --module no_such_module: No module named 'no_such_module'"),
}


@pytest.mark.parametrize('case', sorted(CLI_CASES))
def test_cli_refuses_in_one_line(case, tmp_path, cae_workdir):
  argv, message = CLI_CASES[case]
  (tmp_path / 'file').write_text('a file')
  image = tmp_path / 'in' / 'image.png'
  image.parent.mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  before = sorted(os.listdir(cae_workdir))
  code, _, stderr = run_cli(*[a.format(workdir=cae_workdir, tmp=tmp_path, image=image)
                              for a in argv])
  line = _assert_refused(code, stderr)
  assert re.search(message, line), line
  assert not (tmp_path / 'o').exists() and not (tmp_path / 'z.npz').exists()
  assert (tmp_path / 'file').read_text() == 'a file'
  assert sorted(os.listdir(cae_workdir)) == before


IMPORT_CASES = {
    'missing source': (['--source', '{tmp}/nope.tar.gz', '--data_dir', '{tmp}/tfds'],
                       r'error: CIFAR-10 source .*nope.tar.gz does not exist'),
    'unrecognized source': (['--source', '{tmp}', '--data_dir', '{tmp}/tfds'],
                            r'error: .* holds neither cifar-10-batches-bin/ nor'),
    'data_dir is a file': (['--source', '{tmp}', '--data_dir', '{tmp}/file'],
                           r'error: --data_dir .*file is a file, not a folder'),
    'no arguments': ([], r'error: the following arguments are required: --source'),
}


@pytest.mark.parametrize('case', sorted(IMPORT_CASES))
def test_cifar10_import_refuses_in_one_line(case, tmp_path, capsys):
  argv, message = IMPORT_CASES[case]
  (tmp_path / 'file').write_text('a file')
  try:
    code = import_cifar10.main([a.format(tmp=tmp_path) for a in argv])
  except SystemExit as e:
    code = e.code
  line = _assert_refused(code, capsys.readouterr().err)
  assert re.search(message, line), line
  assert not (tmp_path / 'tfds').exists()


def test_no_data_message_commands_run_as_written():
  text = import_cifar10.missing_cifar10_help('/data/tfds')
  for command in re.findall(r'`(python [^`]+)`', text):
    if 'launch.py' in command:
      assert '--workdir' in command, command


def test_check_dir_accepts_new_and_existing_folders(tmp_path):
  assert paths.check_dir(str(tmp_path / 'new' / 'run'), '--workdir') == str(
      tmp_path / 'new' / 'run')
  assert paths.check_dir(str(tmp_path), '--workdir') == str(tmp_path)
  assert not (tmp_path / 'new').exists()  # Checked, not made.


@pytest.mark.slow
def test_the_installed_convae_command_trains(tmp_path, photo_data_dir):
  """`pip install -e .` gives `convae`: `convae train` is launch.py (the other modes, the CLI
  run in-process above)."""
  import shutil  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  convae = shutil.which('convae')
  assert convae, 'the convae command is not installed: pip install -e .'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu')
  run = lambda *args: subprocess.run([convae, *map(str, args)], cwd=tmp_path, env=env,
                                     capture_output=True, text=True, timeout=300, check=False)
  result = run('--help')
  assert result.returncode == 0 and 'train' in result.stdout and 'reconstruct' in result.stdout
  workdir = tmp_path / 'run'
  # From a folder that holds no configs/: the default config is the installed one's.
  result = run('train', '--workdir', workdir, '--config.dataset=photo_patches',
               f'--config.data_dir={photo_data_dir}', '--config.num_train_steps=2',
               '--config.batch_size=8', '--config.eval_batch_size=64',
               '--config.profile_num_steps=0', '--config.num_grid_images=4')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Done: trained to step 2 of 2' in result.stderr.strip().splitlines()[-1]



def test_a_new_trainer_key_is_one_edit(monkeypatch, photo_data_dir):
  """The checks take the keys and their types from trainer_config.defaults() alone."""
  from configs import photos  # pylint: disable=g-import-not-at-top
  from convae_jax import config_checks, trainer_config  # pylint: disable=g-import-not-at-top
  defaults = trainer_config.defaults

  def with_new_key():
    config = defaults()
    config.warmup_steps = 0
    return config

  monkeypatch.setattr(trainer_config, 'defaults', with_new_key)
  config = tiny(photos.get_config(), data_dir=photo_data_dir)
  assert config.warmup_steps == 0  # configs/photos.py got it through configs/cifar.py.
  config_checks.check(config, num_devices=4)
  config = ml_collections.ConfigDict({**config.to_dict(), 'warmup_steps': 'soon'})
  with pytest.raises(config_checks.ConfigError, match=r"config.warmup_steps='soon': must be int"):
    config_checks.check(config, num_devices=4)
