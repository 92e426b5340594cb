"""The second stage: a prior over the codes of a trained autoencoder (configs/cifar_prior.py).

`train_and_evaluate(config, workdir)` loads the first stage that config.autoencoder names
(a workdir or 'pretrained:NAME'), computes the codes of its train and eval splits once
(codes.py), and trains the prior config.model names (models.priors) on them with the train
step and loop of the autoencoders (steps.py, loop.py): the same optimizer, schedules, EMA,
devices, checkpoints, exact resume and stops. Each evaluation gives the prior's negative
log-likelihood of the eval split's codes in bits per code beside their marginal entropy,
the prior's share of the bits per image dimension (the whole model's, where the first stage's
likelihood gives its reconstruction term), and samples decoded by the first stage.
"""
import contextlib
import functools
import math
import os

import flax.jax_utils
import jax
import ml_collections
import numpy as np
from absl import logging

from convae_jax import (checkpointing, codes as codes_lib, config_checks, distributed, errors,
                        evaluation, image_grid, inference, input_pipeline, loop, metrics,
                        optimizer, paths, prior_config, steps, workdir as workdir_lib, writers)
from convae_jax.models import priors


def load_first_stage(config: ml_collections.ConfigDict) -> inference.TrainedModel:
  """config.autoencoder, loaded; refused unless it is an autoencoder with discrete codes."""
  try:
    first_stage = inference.load(config.autoencoder)
  except errors.UserError as e:
    raise config_checks.ConfigError(f'config.autoencoder={config.autoencoder!r}: {e}') from None
  if not isinstance(first_stage, inference.TrainedModel):
    raise config_checks.ConfigError(
        f'config.autoencoder={config.autoencoder!r} is a prior run; name the autoencoder '
        'whose codes to model')
  first_stage.require_codes(f'config.autoencoder={config.autoencoder!r}')
  return first_stage


def with_first_stage_data(config: ml_collections.ConfigDict,
                          first_stage: inference.TrainedModel) -> ml_collections.ConfigDict:
  """`config` with the data keys it leaves unset taken from the first stage's config (the
  saved config.json then says what the prior was trained on)."""
  config = config.copy_and_resolve_references()
  trained = first_stage.config
  for key in ('dataset', 'train_split', 'eval_split', 'image_size'):
    if config[key] is None:
      config[key] = trained.get(key)
  if config.data_dir is None and trained.get('data_dir') and os.path.isdir(trained.data_dir):
    config.data_dir = trained.data_dir
  return config


def check_grid(config, first_stage: inference.TrainedModel,
               info: input_pipeline.DatasetInfo) -> tuple[int, int]:
  """The code grid of the data, refused unless it is the first stage's training grid."""
  trained = (first_stage.code_grid[0] * first_stage.factor,
             first_stage.code_grid[1] * first_stage.factor)
  height, width, channels = info.image_shape
  if (height, width) != trained:
    raise config_checks.ConfigError(
        f'{config.dataset}:{config.train_split} images of {height}x{width} give a code grid of '
        f'{height // first_stage.factor}x{width // first_stage.factor}, and the first stage '
        f'was trained on {trained[0]}x{trained[1]} images (a {first_stage.code_grid[0]}x'
        f'{first_stage.code_grid[1]} grid): a prior models the codes of its training size; '
        f'set --config.image_size={trained[0]}, or leave it and the dataset at the first '
        "stage's")
  if channels != first_stage.channels:
    raise config_checks.ConfigError(
        f'{config.dataset} images have {channels} channels, and the first stage takes '
        f'{first_stage.channels}; use its dataset (leave --config.dataset unset)')
  return first_stage.code_grid


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains `config`'s prior in `workdir`, resuming from its newest readable checkpoint.

  Refuses (errors.UserError, before anything is written) a config that cannot work, a first
  stage without discrete codes, data whose code grid is not the first stage's, and a workdir
  that holds another prior's codes or checkpoints.
  """
  prior_config.check(config, jax.device_count(), jax.process_count())
  workdir = paths.check_dir(workdir, '--workdir')
  distributed.check_equal_local_devices()
  first_stage = load_first_stage(config)
  config = with_first_stage_data(config, first_stage)
  config_checks.check_dataset(config.dataset)
  info = distributed.process_0_first(lambda: input_pipeline.describe(
      config.dataset, config.data_dir,
      {'config.train_split': config.train_split, 'config.eval_split': config.eval_split},
      config.image_size), errors.UserError)
  grid = check_grid(config, first_stage, info)
  model = priors.create_prior(config.model, first_stage.model.num_codes, grid, config.dtype)
  if info.num_examples[config.train_split] is not None:
    loop.check_warmup(config, loop.num_train_steps(config, info.num_examples[
        config.train_split]))
  with contextlib.ExitStack() as stack:
    with distributed.same_outcome(workdir_lib.WorkdirBusyError):
      if jax.process_index() == 0:
        stack.enter_context(workdir_lib.WorkdirLock(workdir))
    return _train_locked(config, workdir, model, first_stage)


def eval_step(state: steps.TrainState, codes: jax.Array, mask: jax.Array, base_rng: jax.Array,
              *, model, metrics_cls):
  """The prior's NLL of each code grid of one eval batch (`mask` drops the padding)."""
  del base_rng  # Evaluation draws nothing.
  output = model.apply({'params': state.params, **state.model_state}, codes, train=False)
  return metrics_cls.gather_from_model_output(
      mask=mask, nll=output.losses['nll'], bits_per_code=output.metrics['bits_per_code'])


def make_eval_step(model: priors.CodePrior):
  """`eval_step` pmapped over the local devices: (replicated state, codes [devices, batch,
  h, w], mask, rng) -> the averages of nll and bits_per_code."""
  return jax.pmap(functools.partial(
      eval_step, model=model, metrics_cls=metrics.eval_collection(['nll', 'bits_per_code'], 0)),
                  axis_name=steps.AXIS, in_axes=(0, 0, 0, None))


def _train_locked(config, workdir: str, model: priors.CodePrior,
                  first_stage: inference.TrainedModel) -> steps.TrainState:
  devices = jax.local_devices()
  codes = distributed.process_0_first(
      lambda: codes_lib.load_or_compute(workdir, first_stage, config), errors.UserError)
  grid = tuple(model.grid)
  num_train_steps = loop.num_train_steps(config, len(codes.train))
  loop.check_warmup(config, num_train_steps)

  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  tx = optimizer.create_optimizer(config, num_train_steps)
  checkpointer = checkpointing.Checkpointer(workdir, config.max_to_keep)
  state = checkpointer.restore_newest_readable(
      steps.abstract_train_state(model, tx, grid, config.ema_decay))
  if state is None:
    state = steps.create_train_state(model, tx, init_rng, grid, config.ema_decay)
  else:
    logging.info('Resumed from %s at step %d', checkpointer.directory, int(state.step))
  start_step = int(state.step)
  if start_step >= num_train_steps:
    checkpointer.close()
    logging.info('Nothing to do: %s is already trained to step %d of %d. Last evaluation: %s',
                 workdir, start_step, num_train_steps, loop.last_eval_line(workdir))
    return state

  logging.info('%d train / %d eval code grids of %dx%d (%d codes) from %s; %d steps of %d on '
               '%d %s devices', len(codes.train), len(codes.eval), *grid, model.num_codes,
               first_stage.workdir, num_train_steps, config.batch_size, jax.device_count(),
               jax.default_backend())
  logging.info('Config:\n%s', config)
  if jax.process_index() == 0:
    workdir_lib.save_config(config, workdir, start_step)
  writer = writers.create_writer(workdir)

  p_train_step = steps.make_train_step(config, model, grid, num_train_steps=num_train_steps,
                                       accumulate=True)
  train_metrics_cls = steps.train_metrics_class(model, grid)
  no_train_metrics = lambda: steps.replicate(train_metrics_cls.empty(), devices)
  p_eval_step = make_eval_step(model)
  p_ema_weights = jax.pmap(lambda state: steps.evaluated_weights(state, config.ema_decay))
  sample = jax.jit(functools.partial(priors.sample, model), static_argnums=(2, 3, 4))
  where = dict(num_local_devices=len(devices), process_index=jax.process_index(),
               process_count=jax.process_count())
  eval_split = input_pipeline.Split(images=codes.eval)
  eval_batches = lambda: input_pipeline.eval_batches(
      eval_split, global_batch_size=config.eval_batch_size, **where)
  entropy = codes.about['eval_marginal_entropy_bits']
  positions, image_dims = math.prod(grid), codes.about['image_dims']
  first_stage_bpd = codes.about['first_stage_eval_nll_bpd']

  def figures(results: dict[str, float]) -> dict[str, float]:
    bits = results['bits_per_code']
    out = {'nll': results['nll'], 'bits_per_code': bits, 'marginal_entropy_bits': entropy,
           # How far below the codes' marginal entropy: what the prior learned of context.
           'below_marginal_entropy': 1.0 - bits / entropy,
           'prior_bpd': bits * positions / image_dims}
    if first_stage_bpd is not None:  # The VQ-VAE paper's bits/dim: prior plus decoder.
      out['bpd'] = out['prior_bpd'] + first_stage_bpd
    return out

  def evaluate(step: int, state) -> dict[str, float]:
    with_ema = isinstance(state, steps.EmaTrainState)
    evaluated = p_ema_weights(state) if with_ema else state
    results, _ = evaluation.evaluate(p_eval_step, evaluated, eval_batches(), devices, step_rng)
    scalars = {f'eval/{k}': v for k, v in figures(results).items()}
    if with_ema:
      raw, _ = evaluation.evaluate(p_eval_step, state, eval_batches(), devices, step_rng)
      scalars.update({f'eval_raw/{k}': v for k, v in figures(raw).items()})
    writer.write_scalars(step, scalars)
    if jax.process_index() == 0 and config.num_samples:
      host = jax.device_get(flax.jax_utils.unreplicate(evaluated))
      drawn = sample({'params': host.params, **host.model_state},
                     jax.random.fold_in(step_rng, step), config.num_samples,
                     float(config.sample_temperature), int(config.sample_top_k))
      grid_image = image_grid.tile(first_stage.decode_codes(np.asarray(drawn)))
      writer.write_images(step, {'samples': grid_image[None]})
      image_grid.save_png(grid_image, os.path.join(workdir, 'images', f'samples_{step}.png'))
    return scalars

  train_batches = input_pipeline.train_batches(
      input_pipeline.Split(images=codes.train), global_batch_size=config.batch_size,
      seed=config.seed, start_step=start_step, **where)
  return loop.train(config, workdir, state, start_step=start_step,
                    num_train_steps=num_train_steps, p_train_step=p_train_step,
                    no_train_metrics=no_train_metrics, train_batches=train_batches,
                    evaluate=evaluate, checkpointer=checkpointer, writer=writer,
                    step_rng=step_rng, devices=devices)
