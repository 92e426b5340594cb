"""The results table of priors over codes (configs/cifar_prior.py), made from their runs.

    python tools/prior_table.py --below 0.15 transformer=results/priors/transformer

Each argument is NAME=FOLDER (split at its last '='), or a FOLDER, named by its folder: a
prior's workdir, or what tools/keep_run.sh kept of it (config.json, metrics.jsonl,
codes/about.json, machine.json). One Markdown row per run, from its final evaluation (the EMA
weights of a run with EMA): the prior and its first stage, how long it trained, the eval
split's negative log-likelihood in bits per code beside the codes' marginal entropy over that
split and how far below it, the prior's bits per image dimension, and the whole model's (the
VQ-VAE paper's figure: the prior's code NLL plus the first stage's reconstruction term, where
its likelihood gives one; '-' where not), the machine kind; with --below F, whether the NLL is
at least the fraction F below the entropy, or by how much it falls short.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # The repo.
from convae_jax import errors  # pylint: disable=wrong-import-position
from tools import results_table  # pylint: disable=wrong-import-position

COLUMNS = ('run', 'prior', 'first stage', 'training', 'bits/code', 'marginal entropy',
           'below it', 'prior bits/dim', 'bits/dim', 'machine', 'target', 'status')


def row(name: str, folder: str, below: float | None) -> dict[str, str]:
  config, lines = results_table.read_run(folder)
  if 'autoencoder' not in config:
    raise errors.UserError(f'{folder}/config.json is not of a prior run (it has no '
                           'autoencoder); pass the workdir of configs/cifar_prior.py')
  evals = [l for l in lines if 'eval/bits_per_code' in l]
  if not evals:
    raise errors.UserError(f'{folder}/metrics.jsonl has no evaluation yet')
  last = evals[-1]
  share = last['eval/below_marginal_entropy']
  target, status = '-', '-'
  if below is not None:
    target = f'at least {100 * below:g}% below the marginal entropy'
    status = 'met' if share >= below else (
        f'missed by {100 * (below - share):.1f} percentage points')
  return {
      'run': name, 'prior': config.model.name, 'first stage': config.autoencoder,
      'training': results_table.training_length(config, last['step']),
      'bits/code': f'{last["eval/bits_per_code"]:.3f}',
      'marginal entropy': f'{last["eval/marginal_entropy_bits"]:.3f}',
      'below it': f'{100 * share:.1f}%',
      'prior bits/dim': f'{last["eval/prior_bpd"]:.3f}',
      'bits/dim': f'{last["eval/bpd"]:.3f}' if 'eval/bpd' in last else '-',
      'machine': results_table.machine_label(folder), 'target': target, 'status': status,
  }


def main(argv=None) -> int:
  parser = errors.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('runs', nargs='+', help='NAME=FOLDER or FOLDER')
  parser.add_argument('--below', type=float, default=None,
                      help='The target: bits per code at least this fraction below the '
                      'marginal entropy (e.g. 0.15).')
  args = parser.parse_args(argv)
  runs = [tuple(r.rsplit('=', 1)) if '=' in r else (os.path.basename(r.rstrip('/')), r)
          for r in args.runs]
  try:
    print(results_table.markdown([row(name, folder, args.below) for name, folder in runs],
                                 COLUMNS))
  except errors.UserError as e:
    return errors.report(e)
  return 0


if __name__ == '__main__':
  sys.exit(main())
