"""tools/first_eval_check.py: a row's first evaluation, rerun, equals the kept run's bitwise."""
import json
import os
import subprocess
import sys

from conftest import run_launch
from tools import first_eval_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(data_dir):
  return ['--config', 'configs/photos.py', f'--config.data_dir={data_dir}',
          '--config.num_train_steps=6', '--config.batch_size=16', '--config.eval_batch_size=64',
          '--config.eval_every_steps=3', '--config.checkpoint_every_steps=3',
          '--config.profile_num_steps=0', '--config.num_grid_images=8',
          '--config.eval_lpips=False']


def test_compare_names_each_differing_figure():
  reference = [{'step': 3, 'eval/psnr': 20.5, 'eval/mse': 0.01}, {'step': 6, 'eval/psnr': 21.0,
                                                                   'eval/mse': 0.009}]
  assert first_eval_check.compare(reference, {'step': 3, 'eval/psnr': 20.5, 'eval/mse': 0.01})[
      'equal']
  off = first_eval_check.compare(reference, {'step': 3, 'eval/psnr': 20.500001, 'eval/mse': 0.01})
  assert not off['equal'] and list(off['differing']) == ['eval/psnr']
  assert not first_eval_check.compare(reference, {'step': 3, 'eval/psnr': 20.5})['equal']
  assert not first_eval_check.compare(reference, {'step': 4, 'eval/psnr': 20.5})['equal']


def test_rerun_stops_after_first_evaluation_and_matches(tmp_path, photo_data_dir):
  reference = tmp_path / 'reference'
  result = run_launch(['--workdir', str(reference)] + _args(photo_data_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  recheck = tmp_path / 'recheck'
  # As many devices as the reference had: the evaluation's mean over devices is part of it.
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  check = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'first_eval_check.py'),
                          str(reference), '--workdir', str(recheck), '--timeout_s', '300', '--']
                         + _args(photo_data_dir), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=400, check=False)
  assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
  report = json.load(open(recheck / 'first_eval_check.json', encoding='utf-8'))
  assert report['equal'] and report['step'] == 3 and report['figures'] >= 3
  # Stopped after its first evaluation: the reference's last step was never reached.
  assert 6 not in [e['step'] for e in first_eval_check.evaluations(str(recheck / 'metrics.jsonl'))]
  refused = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'first_eval_check.py'),
                            str(reference), '--workdir', str(recheck), '--']
                           + _args(photo_data_dir), cwd=REPO, capture_output=True, text=True,
                           check=False)
  assert refused.returncode == 2 and 'not empty' in refused.stderr
