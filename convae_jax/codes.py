"""The data of a prior: a first stage's code grids of the train and eval splits, computed once
into WORKDIR/codes/ (train.npy, eval.npy: int32 [N, h, w]) and read from there when the run
resumes, with about.json saying whose codes they are and what they hold.

about.json is written last, so a run stopped while computing leaves no codes that look
finished; a workdir whose codes are of another first stage, dataset or split is refused.
"""
import dataclasses
import json
import math
import os

import jax
import numpy as np
from absl import logging

from convae_jax import errors, input_pipeline, steps


class CodesMismatchError(errors.UserError):
  """The workdir holds the codes of another first stage (or dataset, split, image size)."""


@dataclasses.dataclass
class Codes:
  train: np.ndarray  # int32 [N, h, w]
  eval: np.ndarray
  about: dict


def marginal_entropy_bits(codes: np.ndarray, num_codes: int) -> float:
  """The entropy of the codes' frequencies over all positions, in bits per code: the NLL of
  the best prior that ignores where a code is and what surrounds it."""
  counts = np.bincount(codes.ravel(), minlength=num_codes).astype(np.float64)
  share = counts[counts > 0] / counts.sum()
  return float(-np.sum(share * np.log2(share)))


def source_of(first_stage, config) -> dict:
  """What the codes are of: the first stage (its workdir or pretrained name, checkpoint step
  and weights) and the data (config's resolved dataset, splits and image size)."""
  return {'autoencoder': first_stage.workdir, 'step': first_stage.step,
          'weights': first_stage.weights, 'num_codes': first_stage.model.num_codes,
          'dataset': config.dataset, 'train_split': config.train_split,
          'eval_split': config.eval_split, 'image_size': config.image_size}


def _differences(saved: dict, wanted: dict) -> str:
  return ', '.join(f'{key} {saved.get(key)!r} there, {wanted[key]!r} here'
                   for key in wanted if saved.get(key) != wanted[key])


def load_or_compute(workdir: str, first_stage, config) -> Codes:
  """The codes of `config`'s train and eval splits under `first_stage` (inference.
  TrainedModel): read from WORKDIR/codes/, or computed and (by process 0) written there."""
  folder = os.path.join(workdir, 'codes')
  about_path = os.path.join(folder, 'about.json')
  wanted = source_of(first_stage, config)
  if os.path.exists(about_path):
    with open(about_path, encoding='utf-8') as f:
      about = json.load(f)
    if about['source'] != wanted:
      raise CodesMismatchError(
          f'{folder} holds the codes of another first stage or data '
          f'({_differences(about["source"], wanted)}): a workdir trains one prior on one set '
          'of codes; use a new --workdir')
    logging.info('Codes read from %s', folder)
    return Codes(np.load(os.path.join(folder, 'train.npy')),
                 np.load(os.path.join(folder, 'eval.npy')), about)

  logging.info('Computing the codes of %s:%s and %s:%s with %s (once; kept in %s)',
               config.dataset, config.train_split, config.dataset, config.eval_split,
               first_stage.workdir, folder)
  codes = {}
  for name, split in (('train', config.train_split), ('eval', config.eval_split)):
    images = input_pipeline.load_split(config.dataset, split, config.data_dir,
                                       config.image_size).images
    codes[name] = first_stage.codes(images)
  num_codes = first_stage.model.num_codes
  image_dims = math.prod(images.shape[1:])
  about = {
      'source': wanted, 'grid': list(codes['eval'].shape[1:]), 'image_dims': image_dims,
      'num_examples': {name: len(value) for name, value in codes.items()},
      'eval_marginal_entropy_bits': marginal_entropy_bits(codes['eval'], num_codes),
      'eval_codes_used': float(np.mean(np.bincount(codes['eval'].ravel(),
                                                   minlength=num_codes) > 0)),
      # The first stage's reconstruction term -log p(x | z) in bits per dimension over the
      # eval split, where its likelihood is a distribution over pixels (else None).
      'first_stage_eval_nll_bpd': None,
  }
  if 'nll_bpd' in steps.metric_names(first_stage.model, images.shape[1:], train=False):
    about['first_stage_eval_nll_bpd'] = first_stage.evaluate(
        config.eval_split, dataset=config.dataset, data_dir=config.data_dir)['nll_bpd']
  if jax.process_index() == 0:
    os.makedirs(folder, exist_ok=True)
    for name, value in codes.items():
      _replace(os.path.join(folder, f'{name}.npy'), lambda f, v=value: np.save(f, v))
    _replace(about_path, lambda f: f.write(json.dumps(about, indent=2).encode() + b'\n'))
  return Codes(codes['train'], codes['eval'], about)


def _replace(path: str, write) -> None:
  """Writes `path` whole or not at all (a temporary file, renamed)."""
  with open(path + '.tmp', 'wb') as f:
    write(f)
  os.replace(path + '.tmp', path)
