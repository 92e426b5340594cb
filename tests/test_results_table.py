"""tools/results_table.py: the README's results table and curves, from workdirs."""
import json
import os

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
