"""tools/results_table.py: the README's results table and curves, from workdirs."""
import json
import os
import shutil

import pytest

from configs import cifar
from conftest import REPO
from tools import results_table


def _final_eval(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8')]
  return [l for l in lines if 'eval/mse' in l][-1]


def test_table_rows_are_the_workdirs_figures(cae_workdir, tmp_path, capsys):
  curves = tmp_path / 'curves.png'
  assert results_table.main([f'seed={cae_workdir}', cae_workdir, '--curves', str(curves)]) == 0
  header, rule, first, second = capsys.readouterr().out.strip().splitlines()
  assert header.startswith('| run | model | parameters |') and rule.startswith('|---|')
  cells = [c.strip() for c in first.strip('|').split('|')]
  row = dict(zip(results_table.COLUMNS, cells))
  final = _final_eval(cae_workdir)
  assert row['run'] == 'seed' and row['model'] == 'seed+identity+mse'
  assert row['parameters'] == '7,347' and row['steps'] == str(final['step'])
  assert row['PSNR (dB)'] == f'{final["eval/psnr"]:.2f}'
  assert row['test MSE'] == f'{final["eval/mse"]:.5f}' and row['bits/dim'] == '-'
  assert row['codes used'] == '-'
  assert second.startswith(f'| {os.path.basename(cae_workdir)} |')
  assert curves.stat().st_size > 1000


def test_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
  assert results_table.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'config.json does not exist' in err and len(
      err.splitlines()) == 1


def test_a_row_names_the_machine_kind_its_run_kept(cae_workdir, tmp_path, capsys):
  kept = tmp_path / 'kept'
  kept.mkdir()
  for name in ('config.json', 'metrics.jsonl'):
    shutil.copy(os.path.join(cae_workdir, name), kept / name)
  (kept / 'machine.json').write_text(json.dumps(
      {'cpu': 'AMD EPYC', 'avx512': False, 'cores': 2, 'date': '2026-12-02'}))
  assert results_table.main([f'kept={kept}', f'unkept={cae_workdir}']) == 0
  rows = capsys.readouterr().out.strip().splitlines()[2:]
  machines = [dict(zip(results_table.COLUMNS, [c.strip() for c in r.strip('|').split('|')]))[
      'machine'] for r in rows]
  assert machines == ['AMD EPYC, AVX2, no AVX-512, 2 cores, 2026-12-02', '-']


def test_bits_per_dim_shows_the_importance_weighted_bound_of_the_last_step(
    cae_workdir, tmp_path, capsys):
  kept = tmp_path / 'kept'  # The cae's run, given a bits/dim at each evaluation.
  kept.mkdir()
  shutil.copy(os.path.join(cae_workdir, 'config.json'), kept / 'config.json')
  lines = [json.loads(l) for l in open(os.path.join(cae_workdir, 'metrics.jsonl'),
                                       encoding='utf-8')]
  with open(kept / 'metrics.jsonl', 'w', encoding='utf-8') as f:
    for line in lines:
      f.write(json.dumps({**line, 'eval/bpd': 5.5} if 'eval/mse' in line else line) + '\n')
  step = _final_eval(cae_workdir)['step']
  evaluation = {'step': step, 'split': 'test',
                'metrics': {'bpd': 5.5, 'bpd_iw': 5.25, 'importance_samples': 16}}
  (kept / f'evaluation_test_{step - 1}.json').write_text(json.dumps(evaluation))

  def bits_per_dim():
    assert results_table.main([str(kept)]) == 0
    cells = capsys.readouterr().out.splitlines()[2].strip('|').split('|')
    return dict(zip(results_table.COLUMNS, [c.strip() for c in cells]))['bits/dim']

  assert bits_per_dim() == '5.500'  # Another step's evaluation is not this row's.
  (kept / f'evaluation_test_{step}.json').write_text(json.dumps(evaluation))
  assert bits_per_dim() == '5.500 (IW, k=16: 5.250)'


def test_a_row_counts_the_figures_its_first_eval_reruns_reproduced(cae_workdir, tmp_path,
                                                                    capsys):
  kept = tmp_path / 'kept'
  kept.mkdir()
  for name in ('config.json', 'metrics.jsonl'):
    shutil.copy(os.path.join(cae_workdir, name), kept / name)
  (kept / 'first_eval_check_zen3.json').write_text(json.dumps(
      {'step': 2, 'figures': 5, 'differing': {}, 'missing': [], 'equal': True}))
  (kept / 'first_eval_check_zen4.json').write_text(json.dumps(
      {'step': 2, 'figures': 4, 'differing': {'eval/psnr': {}}, 'missing': ['eval/ssim'],
       'equal': False}))
  assert results_table.main([str(kept)]) == 0
  cells = capsys.readouterr().out.splitlines()[2].strip('|').split('|')
  assert dict(zip(results_table.COLUMNS, [c.strip() for c in cells]))[
      'rerun to 1st eval'] == '5 of 5 equal (zen3), 3 of 5 equal (zen4)'


def test_refresh_tables_replaces_the_table_after_each_command(cae_workdir, tmp_path, capsys):
  from tools import refresh_tables
  command = f'python tools/results_table.py seed={cae_workdir}'
  page = tmp_path / 'page.md'
  stale = '| run | model | parameters |\n|---|---|---|\n| seed | old | 1 |'
  page.write_text(f'Intro.\n\nMade by `{command}`:\n\n{stale}\n\nAfter.\n', encoding='utf-8')
  assert results_table.main([f'seed={cae_workdir}']) == 0
  table = capsys.readouterr().out.strip()
  assert refresh_tables.main(['refresh_tables.py', str(page)]) == 0
  assert page.read_text(encoding='utf-8') == (
      f'Intro.\n\nMade by `{command}`:\n\n{table}\n\nAfter.\n')
  # A command that fails leaves the page as it was.
  page.write_text(f'`python tools/results_table.py {tmp_path}/none`\n\n{stale}\n',
                  encoding='utf-8')
  before = page.read_text(encoding='utf-8')
  assert refresh_tables.main(['refresh_tables.py', str(page)]) == 1
  assert page.read_text(encoding='utf-8') == before
  # A name in a code block below the last table is no command (backticks pair within a line).
  layout = '```\ntools/results_table.py   the tables\n```\n'
  page.write_text(f'Made by `{command}`:\n\n{stale}\n\n{layout}', encoding='utf-8')
  assert refresh_tables.main(['refresh_tables.py', str(page)]) == 0
  assert page.read_text(encoding='utf-8') == f'Made by `{command}`:\n\n{table}\n\n{layout}'
  # A command with no table after it: one line, the page unchanged.
  capsys.readouterr()
  page.write_text(f'Made by `{command}`.\n', encoding='utf-8')
  assert refresh_tables.main(['refresh_tables.py', str(page)]) == 1
  err = capsys.readouterr().err
  assert 'no results table' in err and len(err.strip().splitlines()) == 1
  assert page.read_text(encoding='utf-8') == f'Made by `{command}`.\n'


def test_the_parameter_count_includes_a_learned_prior_over_the_training_grid():
  config = cifar.get_config('vae')
  standard = results_table.parameter_count(config)
  config.model.bottleneck.prior = 'low_rank'
  config.model.bottleneck.prior_rank = 4
  grid = 8 * 8 * config.model.bottleneck.latent_channels  # 32x32 images, 4x downsampled.
  # loc, log_diag and a grid x rank factor.
  assert results_table.parameter_count(config) - standard == grid * (2 + 4)


def test_the_targets_table_says_met_or_by_how_much(cae_workdir, tmp_path, capsys):
  from tools import refresh_tables
  psnr = _final_eval(cae_workdir)['eval/psnr']
  targets = tmp_path / 'targets.json'
  targets.write_text(json.dumps({
      'met': {'anchor': 'a', 'checks': [{'figure': 'psnr', 'at_least': round(psnr - 1, 1)}]},
      'missed': {'anchor': 'b', 'checks': [
          {'figure': 'psnr', 'at_least': psnr + 0.5},
          {'stated': 'samples that are not noise', 'met': False, 'name': 'samples',
           'why': 'noise'}]},
      'relative': {'anchor': 'c', 'checks': [{'figure': 'psnr', 'at_least_run': 'met'}]},
  }))
  runs = [f'{name}={cae_workdir}' for name in ('met', 'missed', 'relative', 'free')]
  assert results_table.main(['--targets', str(targets), *runs]) == 0
  header, _, *lines = capsys.readouterr().out.strip().splitlines()
  assert header.startswith(refresh_tables.HEADER)  # So that the page's table regenerates.
  rows = [dict(zip(results_table.TARGET_COLUMNS, [c.strip() for c in r.strip('|').split('|')]))
          for r in lines]
  assert [r['run'] for r in rows] == ['met', 'missed', 'relative', 'free']
  assert rows[0]['main figure'] == f'{psnr:.2f} dB' and rows[0]['training'] == '2 steps'
  assert rows[0]['target'] == f'PSNR at least {round(psnr - 1, 1):g} dB'
  assert rows[0]['status'] == 'PSNR **met**'
  assert rows[1]['target'] == (f'PSNR at least {psnr + 0.5:g} dB; samples that are not noise')
  assert rows[1]['status'] == 'PSNR **missed by 0.50 dB**; samples **missed** (noise)'
  assert rows[2]['target'] == "PSNR at least met's" and rows[2]['status'] == 'PSNR **met**'
  assert [rows[3][c] for c in ('anchor', 'target', 'status')] == ['-', 'none set', '-']
  # A target that names a row the table lacks: one line.
  targets.write_text(json.dumps(
      {'met': {'anchor': 'a', 'checks': [{'figure': 'psnr', 'at_least_run': 'nope'}]}}))
  assert results_table.main(['--targets', str(targets), f'met={cae_workdir}']) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: target of met: no row 'nope'") and len(err.splitlines()) == 1


def test_lpips_comes_from_the_run_or_its_kept_evaluation_and_targets_compare_runs(
    cae_workdir, tmp_path, capsys):
  final = _final_eval(cae_workdir)
  old = tmp_path / 'old'  # A run that predates eval/lpips, with an evaluation kept beside it.
  old.mkdir()
  shutil.copy(os.path.join(cae_workdir, 'config.json'), old / 'config.json')
  with open(os.path.join(cae_workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    lines = [{k: v for k, v in json.loads(l).items() if k != 'eval/lpips'} for l in f]
  (old / 'metrics.jsonl').write_text('\n'.join(json.dumps(l) for l in lines) + '\n')
  (old / f'evaluation_test_{final["step"]}.json').write_text(
      json.dumps({'metrics': {'lpips': 0.1234, 'psnr': 1.0}}))
  assert results_table.main([f'new={cae_workdir}', f'old={old}']) == 0
  rows = [dict(zip(results_table.COLUMNS, [c.strip() for c in r.strip('|').split('|')]))
          for r in capsys.readouterr().out.strip().splitlines()[2:]]
  assert [r['LPIPS'] for r in rows] == [f'{final["eval/lpips"]:.4f}', '0.1234']
  assert rows[1]['PSNR (dB)'] == f'{final["eval/psnr"]:.2f}'  # The run's own figures first.

  targets = tmp_path / 'targets.json'
  targets.write_text(json.dumps({'new': {'anchor': 'a', 'checks': [
      {'figure': 'lpips', 'at_most_run': 'old', 'factor': 0.75},
      {'figure': 'psnr', 'at_least_run': 'old', 'offset': -1.5}]}}))
  assert results_table.main(['--targets', str(targets), f'new={cae_workdir}', f'old={old}']) == 0
  rows = [dict(zip(results_table.TARGET_COLUMNS, [c.strip() for c in r.strip('|').split('|')]))
          for r in capsys.readouterr().out.strip().splitlines()[2:]]
  assert rows[0]['LPIPS'] == f'{final["eval/lpips"]:.4f}' and rows[1]['LPIPS'] == '0.1234'
  assert rows[0]['target'] == "LPIPS at most 0.75 times old's; PSNR at least old's - 1.5 dB"
  shortfall = final['eval/lpips'] - 0.75 * 0.1234
  lpips_status = 'LPIPS **met**' if shortfall <= 0 else f'LPIPS **missed by {shortfall:.4f}**'
  assert rows[0]['status'] == f'{lpips_status}; PSNR **met**'


def test_the_model_column_names_the_runs_loss_terms(cae_workdir, tmp_path, capsys):
  kept = tmp_path / 'kept'  # The cae's run, as if trained with LPIPS and a discriminator.
  kept.mkdir()
  shutil.copy(os.path.join(cae_workdir, 'metrics.jsonl'), kept / 'metrics.jsonl')
  config = json.load(open(os.path.join(cae_workdir, 'config.json'), encoding='utf-8'))
  config['losses'] = cifar.get_config('vqgan-resnet').losses.to_dict()
  (kept / 'config.json').write_text(json.dumps(config))
  assert results_table.main([f'terms={kept}', f'plain={cae_workdir}']) == 0
  rows = capsys.readouterr().out.strip().splitlines()[2:]
  models = [dict(zip(results_table.COLUMNS, [c.strip() for c in r.strip('|').split('|')]))[
      'model'] for r in rows]
  assert models == ['seed+identity+mse+adversarial+lpips', 'seed+identity+mse']


@pytest.mark.slow
@pytest.mark.parametrize('page', ['README.md', 'docs/results.md', 'docs/priors.md'])
def test_the_pages_tables_are_what_their_commands_print(page):
  # Each table is generated from the kept runs (results/): a typed or stale one fails here.
  from tools import refresh_tables
  with open(os.path.join(REPO, page), encoding='utf-8') as f:
    text = f.read()
  assert refresh_tables.refresh(text, REPO) == text, (
      f'rerun: python tools/refresh_tables.py {page}')
