"""The results table of training runs, made from their workdirs (never typed).

    python tools/results_table.py cae=runs/cae vqvae-resnet=runs/vqvae-resnet \
        --curves docs/sanity_curves.png

Each argument is NAME=WORKDIR (split at its last '='), or a WORKDIR, named by its folder.
Reads WORKDIR/config.json and WORKDIR/metrics.jsonl and prints one Markdown row per run:
parameters, steps, the final evaluation's test MSE, PSNR, SSIM, LPIPS, bits/dim (negative ELBO,
where the model has one; beside it the importance-weighted bound of a `convae evaluate
--importance_samples K` of that step's checkpoint on the eval split, where the run's folder
holds it as evaluation_SPLIT_STEP.json, which also gives the LPIPS of runs that predate
eval/lpips), the fraction of codes used over the eval split and
its perplexity (models with codes), the median train images/s, the training time, the
machine kind (WORKDIR/machine.json, which tools/keep_run.sh writes) and the outcome of each
tools/first_eval_check.py report kept as WORKDIR/first_eval_check_KIND.json (KIND: the
machine kind it reran on); '-' where a file is absent. With --curves, also writes one PNG
of each run's eval PSNR (and bits/dim, where present) against training steps. A run trained
with weight EMA gets two rows: its EMA weights (eval/) and its raw weights (eval_raw/).

With --targets FILE, prints instead one short row per run: how long it trained, its main
figure (bits/dim where the model has a likelihood, else PSNR; and its codes used), its LPIPS,
and, where FILE (JSON) holds the run's NAME, its anchor, its target and whether each part of
the target is met or by how much. A part of a target is {"figure": "psnr" | "codes_used" |
"bpd" | "lpips", "at_least" | "at_most": VALUE} or {"figure": ..., "at_least_run" |
"at_most_run": NAME} (another row's figure, optionally times "factor" plus "offset"),
computed from the run; or {"stated": TEXT, "met": BOOL, "name": TEXT, "why": TEXT} (name and
why optional), an outcome judged or measured outside the run's folder, shown as such.
"""
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import ml_collections

from convae_jax import errors, inference, models

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from benchmarks import machine  # pylint: disable=wrong-import-position

COLUMNS = ('run', 'model', 'parameters', 'steps', 'test MSE', 'PSNR (dB)', 'SSIM', 'LPIPS',
           'bits/dim', 'codes used', 'code perplexity', 'train images/s', 'train time',
           'machine', 'rerun to 1st eval')


def read_run(workdir: str) -> tuple[ml_collections.ConfigDict, list[dict]]:
  config_path, metrics_path = (os.path.join(workdir, n) for n in ('config.json', 'metrics.jsonl'))
  for path in (config_path, metrics_path):
    if not os.path.isfile(path):
      raise errors.UserError(f'{path} does not exist; pass the --workdir of a training run')
  with open(config_path, encoding='utf-8') as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(metrics_path, encoding='utf-8') as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return config, lines


def parameter_count(config: ml_collections.ConfigDict) -> int:
  model = models.create_model(config.model)
  height, width = inference.training_image_size(config, 2**model.num_downsamplings)
  rngs = {s: jax.random.key(0) for s in ('params',) + tuple(model.rng_streams)}
  variables = jax.eval_shape(lambda: model.init(
      rngs, jnp.zeros((1, height, width, model.image_channels))))
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def evaluation(workdir: str, config: ml_collections.ConfigDict, step: int) -> dict:
  """The metrics of the run's `convae evaluate` of `step` on its eval split ({} if none kept)."""
  path = os.path.join(workdir, f'evaluation_{config.eval_split}_{step}.json')
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)['metrics']


def with_evaluation(workdir: str, config: ml_collections.ConfigDict, last: dict) -> dict:
  """`last` (a final eval line) with the figures it lacks from the kept evaluation of its
  step (eval/lpips, for a run that predates it)."""
  kept = {f'eval/{k}': v for k, v in evaluation(workdir, config, last['step']).items()
          if isinstance(v, (int, float))}
  return {**kept, **last}


def importance_weighted_bpd(workdir: str, config: ml_collections.ConfigDict,
                            step: int) -> str:
  """' (IW, k=K: B)' from the run's evaluation of `step` on its eval split, or ''."""
  figures = evaluation(workdir, config, step)
  if 'bpd_iw' not in figures:
    return ''
  return f' (IW, k={figures["importance_samples"]}: {figures["bpd_iw"]:.3f})'


def first_eval_checks(workdir: str) -> str:
  """'8 of 8 equal (xeon)' per first_eval_check_KIND.json report in the run's folder."""
  outcomes = []
  for name in sorted(os.listdir(workdir)):
    if name.startswith('first_eval_check_') and name.endswith('.json'):
      with open(os.path.join(workdir, name), encoding='utf-8') as f:
        report = json.load(f)
      kind = name[len('first_eval_check_'):-len('.json')]
      compared = report.get('figures', 0)  # Figures present in both runs; `missing`: not rerun.
      equal = compared - len(report.get('differing', {}))
      outcomes.append(f'{equal} of {compared + len(report.get("missing", []))} equal ({kind})')
  return ', '.join(outcomes) or '-'


def machine_label(workdir: str) -> str:
  path = os.path.join(workdir, 'machine.json')
  if not os.path.isfile(path):
    return '-'
  with open(path, encoding='utf-8') as f:
    return machine.label(json.load(f))


def _model(workdir: str, config: ml_collections.ConfigDict):
  try:
    return models.create_model(config.model)
  except ValueError as e:
    raise errors.UserError(f'{workdir}/config.json: config.model: {e}') from None


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


def _label(model, config) -> str:
  """The model's parts and the run's loss terms beyond them: resnet+vq+mse+adversarial+lpips."""
  return '+'.join([model.label or config.model.name, *sorted(config.get('losses') or {})])


def row(name: str, workdir: str, prefix: str = 'eval/') -> dict[str, str]:
  """The run's row from its last evaluation's `prefix` figures (eval_raw/: the raw weights of
  a run with EMA)."""
  config, lines = read_run(workdir)
  evals = [{'step': l['step'], **{'eval/' + k[len(prefix):]: v for k, v in l.items()
                                  if k.startswith(prefix)}}
           for l in lines if prefix + 'mse' in l]
  if not evals:
    raise errors.UserError(f'{workdir}/metrics.jsonl has no evaluation yet')
  last = with_evaluation(workdir, config, evals[-1]) if prefix == 'eval/' else evals[-1]
  # The first report's rate includes compilation; the median of the rest is the steady one.
  rates = [l['steps_per_sec'] for l in lines if 'steps_per_sec' in l][1:]
  uptimes = [l['uptime'] for l in lines if 'uptime' in l]
  model = _model(workdir, config)
  fmt = lambda key, spec: format(last[key], spec) if key in last else '-'
  return {
      'run': name, 'model': _label(model, config),
      'parameters': f'{parameter_count(config):,}', 'steps': str(last['step']),
      'test MSE': fmt('eval/mse', '.5f'), 'PSNR (dB)': fmt('eval/psnr', '.2f'),
      'SSIM': fmt('eval/ssim', '.3f'), 'LPIPS': fmt('eval/lpips', '.4f'),
      'bits/dim': fmt('eval/bpd', '.3f') + (
          importance_weighted_bpd(workdir, config, last['step']) if prefix == 'eval/' else ''),
      'codes used': (f'{100 * last["eval/codes_used"]:.1f}% of {model.num_codes}'
                     if 'eval/codes_used' in last else '-'),
      'code perplexity': fmt('eval/code_perplexity', '.1f'),
      'train images/s': (f'{statistics.median(rates) * config.batch_size:,.0f}'
                         if rates else '-'),
      'train time': _duration(uptimes[-1]) if uptimes else '-',
      'machine': machine_label(workdir),
      'rerun to 1st eval': first_eval_checks(workdir),
  }


def markdown(rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(r[c] for c in columns) + ' |' for r in rows]
  return '\n'.join(lines)


# The --targets table. Its first columns are the full table's, so tools/refresh_tables.py
# finds it the same way.
TARGET_COLUMNS = ('run', 'model', 'training', 'main figure', 'LPIPS', 'anchor', 'target',
                  'status')
# figure: (its eval/ key, its name, how a bound reads, how a shortfall reads).
FIGURES = {
    'psnr': ('eval/psnr', 'PSNR', lambda v: f'{v:g} dB', lambda d: f'{d:.2f} dB'),
    'codes_used': ('eval/codes_used', 'codes used', lambda v: f'{100 * v:g}%',
                   lambda d: f'{100 * d:.1f} percentage points'),
    'bpd': ('eval/bpd', 'bits/dim', lambda v: f'{v:g}', lambda d: f'{d:.2f}'),
    'lpips': ('eval/lpips', 'LPIPS', lambda v: f'{v:g}', lambda d: f'{d:.4f}'),
}


def _last_eval(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
  config, lines = read_run(workdir)
  evals = [l for l in lines if 'eval/mse' in l]
  if not evals:
    raise errors.UserError(f'{workdir}/metrics.jsonl has no evaluation yet')
  return config, with_evaluation(workdir, config, evals[-1])


def training_length(config: ml_collections.ConfigDict, step: int) -> str:
  if config.num_train_steps > 0:
    return f'{step} steps'
  epochs = f'{config.num_epochs:g}'
  return f'{epochs} epoch{"" if epochs == "1" else "s"} ({step} steps)'


def _main_figure(workdir: str, config: ml_collections.ConfigDict, last: dict, model) -> str:
  if 'eval/bpd' in last:
    main = f'{last["eval/bpd"]:.3f} bits/dim' + importance_weighted_bpd(
        workdir, config, last['step'])
  else:
    main = f'{last["eval/psnr"]:.2f} dB'
  if 'eval/codes_used' in last:
    main += f', {100 * last["eval/codes_used"]:.1f}% of {model.num_codes} codes'
  return main


def _figure(finals: dict[str, dict], run: str, key: str, of: str) -> float:
  if run not in finals or key not in finals[run]:
    raise errors.UserError(f'target of {of}: no row {run!r} with {key} in this table')
  return finals[run][key]


def _check(check: dict, name: str, finals: dict[str, dict]) -> tuple[str, str]:
  """(how the target reads, how its outcome reads) of one part of run `name`'s target."""
  if 'stated' in check:
    outcome = ' '.join(filter(None, [check.get('name'), '**met**' if check['met'] else
                                     '**missed**', f'({check["why"]})' if 'why' in check else '']))
    return check['stated'], outcome
  if check.get('figure') not in FIGURES:
    raise errors.UserError(f'target of {name}: figure {check.get("figure")!r} is none of '
                           f'{", ".join(FIGURES)}')
  key, words, bound_reads, shortfall_reads = FIGURES[check['figure']]
  value = _figure(finals, name, key, name)
  relative = [k for k in ('at_least_run', 'at_most_run') if k in check]
  if relative:
    other, above = check[relative[0]], relative[0] == 'at_least_run'
    factor, offset = check.get('factor', 1.0), check.get('offset', 0.0)
    bound = factor * _figure(finals, other, key, name) + offset
    scaled = f'{factor:g} times ' if factor != 1.0 else ''
    shifted = f' {"+" if offset > 0 else "-"} {bound_reads(abs(offset))}' if offset else ''
    said = f"{words} {'at least' if above else 'at most'} {scaled}{other}'s{shifted}"
  elif 'at_least' in check or 'at_most' in check:
    above = 'at_least' in check
    bound = check['at_least'] if above else check['at_most']
    said = f'{words} {"at least" if above else "at most"} {bound_reads(bound)}'
  else:
    raise errors.UserError(f'target of {name}: {check} names no at_least, at_most, '
                           'at_least_run or at_most_run')
  shortfall = bound - value if above else value - bound
  if shortfall <= 0:
    return said, f'{words} **met**'
  return said, f'{words} **missed by {shortfall_reads(shortfall)}**'


def target_rows(runs: list[tuple[str, str]], targets: dict) -> list[dict[str, str]]:
  """The --targets table's rows: each run's main figure, and its target where it has one."""
  finals, rows = {}, []
  for name, workdir in runs:
    config, last = _last_eval(workdir)
    finals[name] = last
    model = _model(workdir, config)
    rows.append({'run': name, 'model': _label(model, config),
                 'training': training_length(config, last['step']),
                 'main figure': _main_figure(workdir, config, last, model),
                 'LPIPS': f'{last["eval/lpips"]:.4f}' if 'eval/lpips' in last else '-'})
  for entry in rows:
    target = targets.get(entry['run'])
    if target is None:
      entry.update({'anchor': '-', 'target': 'none set', 'status': '-'})
      continue
    said, outcomes = zip(*(_check(c, entry['run'], finals) for c in target['checks']))
    entry.update({'anchor': target['anchor'], 'target': '; '.join(said),
                 'status': '; '.join(outcomes)})
  return rows


def plot_curves(runs: list[tuple[str, str]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top  (only for --curves)
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  curves = {name: [l for l in read_run(workdir)[1] if 'eval/psnr' in l] for name, workdir in runs}
  with_bpd = any('eval/bpd' in l for evals in curves.values() for l in evals)
  figure, axes = plt.subplots(1, 2 if with_bpd else 1, figsize=(14 if with_bpd else 8, 4.5),
                              squeeze=False)
  colors = plt.get_cmap('tab20').colors  # Distinct for up to 20 runs.
  for i, (name, evals) in enumerate(curves.items()):
    steps = [l['step'] for l in evals]
    style = dict(marker='o', label=name, color=colors[i % len(colors)])
    axes[0, 0].plot(steps, [l['eval/psnr'] for l in evals], **style)
    if with_bpd and all('eval/bpd' in l for l in evals):
      axes[0, 1].plot(steps, [l['eval/bpd'] for l in evals], **style)
  axes[0, 0].set(xlabel='training step', ylabel='test PSNR (dB)')
  if with_bpd:
    axes[0, 1].set(xlabel='training step', ylabel='test bits/dim (negative ELBO)')
  for axis in axes.ravel():
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.0, 1.0))
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=110)


def main(argv=None) -> int:
  parser = errors.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('runs', nargs='+', help='NAME=WORKDIR or WORKDIR')
  parser.add_argument('--curves', help='Also write the eval curves of the runs to this PNG.')
  parser.add_argument('--targets', help='A JSON of the runs\' anchors and targets: print one '
                      'short row per run, its target met or by how much.')
  args = parser.parse_args(argv)
  runs = [tuple(r.rsplit('=', 1)) if '=' in r else (os.path.basename(r.rstrip('/')), r)
          for r in args.runs]
  try:
    if args.targets:
      try:
        with open(args.targets, encoding='utf-8') as f:
          targets = json.load(f)
      except (OSError, ValueError) as e:
        raise errors.UserError(f'--targets {args.targets} cannot be read ({e})') from None
      print(markdown(target_rows(runs, targets), TARGET_COLUMNS))
      if args.curves:
        plot_curves(runs, args.curves)
      return 0
    rows = []
    for name, workdir in runs:
      if any('eval_raw/mse' in l for l in read_run(workdir)[1]):  # EMA: both weights.
        rows += [row(f'{name} (EMA weights)', workdir),
                 row(f'{name} (raw weights)', workdir, 'eval_raw/')]
      else:
        rows.append(row(name, workdir))
    print(markdown(rows))
    if args.curves:
      plot_curves(runs, args.curves)
  except errors.UserError as e:
    return errors.report(e)
  return 0


if __name__ == '__main__':
  sys.exit(main())
