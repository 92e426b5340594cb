"""The autoencoders' trainer: any registered autoencoder on any TFDS image dataset (priors
over their codes: prior_train.py, on the same loop, loop.py).

`train_and_evaluate(config, workdir)` trains with the jitted, pmapped step of steps.py over
the local devices (gradients and metrics averaged with `lax.pmean`), evaluates on the whole eval
split, writes metrics and pictures, checkpoints with Orbax and resumes from the newest
readable checkpoint when launched again on the same workdir. Data order and randomness are
functions of (seed, step), so a resumed run ends bitwise where an unstopped one would.
Multi-process runs (see distributed.py) are the same program in every process: pmap's
collectives span all processes' devices, each process feeds its slice of each global batch,
and process 0 alone writes metrics, pictures and the config.
"""
import contextlib
import os

import flax.jax_utils
import jax
import ml_collections
import numpy as np
from absl import logging

from convae_jax import (checkpointing, config_checks, data, distributed, errors, evaluation,
                        image_grid, input_pipeline, loop, losses, malloc_env, models, optimizer,
                        paths, pixels, steps, warm_start, workdir as workdir_lib, writers)
from convae_jax.cpu import kernels as cpu_kernels


def _check_image_shape(model, image_shape) -> None:
  factor = 2**model.num_downsamplings
  if image_shape[0] % factor or image_shape[1] % factor:
    raise config_checks.ConfigError(
        f'images of {image_shape[0]}x{image_shape[1]} do not divide by {factor}, the '
        'downsampling factor of config.model; set --config.image_size to a multiple of '
        f'{factor} (resize and crop), or use a model with fewer downsamplings')


def _built_for_channels(config, model, channels: int):
  """(config, model) with the model taking and giving the dataset's channel count (a
  grayscale dataset gets a grayscale model); the saved config records it."""
  try:
    current = model.image_channels
  except NotImplementedError:  # A model of one's own that does not say: it is left as it is.
    return config, model
  if current == channels:
    return config, model
  if 'image_channels' not in config.model:
    raise config_checks.ConfigError(
        f'the dataset\'s images have {channels} channels, and config.model takes {current} '
        'with no image_channels setting to change; use a dataset or model that match')
  logging.info('config.model.image_channels=%d set to the dataset\'s %d channels',
               current, channels)
  config = config.copy_and_resolve_references()
  config.model.image_channels = channels
  config_checks.check(config, jax.device_count(), jax.process_count())
  return config, models.create_model(config.model, config.dtype)


def _unreplicate_to_host(tree):
  return jax.device_get(flax.jax_utils.unreplicate(tree))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains `config`'s model in `workdir`, resuming from its newest readable checkpoint.

  Everything a user can get wrong (config, workdir path, dataset, splits, image size) is
  checked before anything is written, and raises errors.UserError: config_checks.
  ConfigError, input_pipeline.DatasetUnavailableError or SplitError, workdir_lib.
  WorkdirBusyError if another run holds the workdir, checkpointing.
  IncompatibleCheckpointError if its checkpoints belong to another model. A run already
  trained to its last step returns its state without reading data. Also raises
  FloatingPointError on non-finite values (with on_non_finite='stop'), and
  preemption.Preempted after saving when SIGTERM/SIGINT arrived.
  """
  config_checks.check(config, jax.device_count(), jax.process_count())
  model = models.create_model(config.model, config.dtype)
  workdir = paths.check_dir(workdir, '--workdir')
  distributed.check_equal_local_devices()
  # Process 0 prepares a missing dataset first, so processes never build it side by side.
  info = distributed.process_0_first(lambda: input_pipeline.describe(
      config.dataset, config.data_dir,
      {'config.train_split': config.train_split, 'config.eval_split': config.eval_split},
      config.image_size), errors.UserError)
  config, model = _built_for_channels(config, model, info.channels)
  # Recorded resolved, so that evaluation and inference anywhere compute as this run does.
  config = config.copy_and_resolve_references()
  config.kernels = cpu_kernels.resolve(config.kernels)
  _check_image_shape(model, info.image_shape)
  init_variables = warm_start.load(config.init_from, model, info.image_shape,
                                   optimizer.create_optimizer(config)) if config.init_from else None
  if info.num_examples[config.train_split] is not None:  # Else checked once the data is read.
    loop.check_warmup(config, loop.num_train_steps(config, info.num_examples[config.train_split]))
  input_mode, why = data.choose_mode(config, info)
  logging.info('Input mode: %s (%s)', input_mode, why)
  logging.info('XLA_FLAGS: %s', os.environ.get('XLA_FLAGS', '(none)'))
  logging.info('glibc malloc settings: %s', malloc_env.describe())
  if config.micro_batches > 1 and jax.default_backend() != 'cpu':
    logging.warning('config.micro_batches=%d on %s: micro-batches were measured to pay on '
                    'XLA:CPU only (docs/performance.md); 1 is the usual choice here',
                    config.micro_batches, jax.default_backend())
  if config.micro_batches == 0:
    logging.info('config.micro_batches=0 (auto): %d micro-batches per device on %s',
                 steps.micro_batches(config, model, jax.device_count(), jax.default_backend(),
                                     info.image_shape),
                 jax.default_backend())
  with contextlib.ExitStack() as stack:
    # Process 0 holds the lock for the run (the others share its workdir); if it cannot,
    # every process stops.
    with distributed.same_outcome(workdir_lib.WorkdirBusyError):
      if jax.process_index() == 0:
        stack.enter_context(workdir_lib.WorkdirLock(workdir))
    return _train_locked(config, workdir, model, info, input_mode, init_variables)


def _train_locked(config, workdir: str, model, info: input_pipeline.DatasetInfo,
                  input_mode: str, init_variables: dict | None) -> steps.TrainState:
  devices = jax.local_devices()
  input_range = tuple(config.input_range)
  open_source = lambda: data.open_source(config, input_mode, info, len(devices),
                                         jax.process_index(), jax.process_count())
  source = None
  image_shape = info.image_shape
  num_train_examples = info.num_examples[config.train_split]
  if num_train_examples is None:  # The metadata does not say: read.
    source = open_source()
    num_train_examples = source.num_train_examples
    loop.check_warmup(config, loop.num_train_steps(config, num_train_examples))
  num_train_steps = loop.num_train_steps(config, num_train_examples)

  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  tx = optimizer.create_optimizer(config, num_train_steps)
  objective = losses.Objective(config.losses)
  checkpointer = checkpointing.Checkpointer(workdir, config.max_to_keep)
  state = checkpointer.restore_newest_readable(
      steps.abstract_train_state(model, tx, image_shape, config.ema_decay, objective))
  if state is None:
    state = steps.create_train_state(model, tx, init_rng, image_shape, config.ema_decay,
                                     objective)
    if init_variables is not None:
      state = warm_start.start_from(state, init_variables, config.ema_decay)
      logging.info('Started from the weights of %s', config.init_from)
  else:
    logging.info('Resumed from %s at step %d', checkpointer.directory, int(state.step))
  start_step = int(state.step)
  if start_step >= num_train_steps:  # Decided before any data is read or anything written.
    checkpointer.close()
    logging.info('Nothing to do: %s is already trained to step %d of %d. Last evaluation: %s',
                 workdir, start_step, num_train_steps, loop.last_eval_line(workdir))
    return state

  if source is None:
    source = open_source()
  logging.info('%d train / %d eval images of shape %s; %d steps of %d on %d %s devices',
               source.num_train_examples, source.num_eval_examples, image_shape,
               num_train_steps, config.batch_size, jax.device_count(), jax.default_backend())
  logging.info('Config:\n%s', config)
  if jax.process_index() == 0:
    workdir_lib.save_config(config, workdir, start_step)
  writer = writers.create_writer(workdir)

  p_train_step = steps.make_train_step(config, model, image_shape,
                                       num_train_steps=num_train_steps, accumulate=True)
  train_metrics_cls = steps.train_metrics_class(model, image_shape, objective)
  no_train_metrics = lambda: steps.replicate(train_metrics_cls.empty(), devices)
  p_eval_step = steps.make_eval_step(model, input_range, image_shape, config.kernels,
                                      config.eval_lpips)
  p_ema_weights = jax.pmap(lambda state: steps.evaluated_weights(state, config.ema_decay))
  pictures = jax.jit(cpu_kernels.tracing_with(config.kernels, lambda variables, x: model.apply(
      variables, x, rngs={s: jax.random.fold_in(step_rng, i)
                          for i, s in enumerate(model.rng_streams)},
      method=lambda m, x: (m(x, train=False).reconstruction, m.pictures(x)))))
  grid_images = (source.grid_images(config.num_grid_images) if config.num_grid_images and
                 jax.process_index() == 0 else np.zeros((0,) + tuple(image_shape), np.uint8))

  def evaluate(step: int, state) -> dict[str, float]:
    batches = source.eval_batches
    # With EMA, eval/ is of the EMA weights (what inference loads) and eval_raw/ of the raw.
    with_ema = isinstance(state, steps.EmaTrainState)
    evaluated = p_ema_weights(state) if with_ema else state
    results, code_counts = evaluation.evaluate(p_eval_step, evaluated, batches(), devices, step_rng)
    scalars = {f'eval/{k}': v for k, v in results.items()}
    if with_ema:
      raw, _ = evaluation.evaluate(p_eval_step, state, batches(), devices, step_rng)
      scalars.update({f'eval_raw/{k}': v for k, v in raw.items()})
    writer.write_scalars(step, scalars)
    if jax.process_index() > 0:
      return scalars
    grids = {}
    if code_counts is not None:  # Each code's use over the whole eval split.
      grids['code_usage'] = image_grid.bar_chart(code_counts)
    if len(grid_images):
      grids.update(reconstruction_grids(evaluated))
    writer.write_images(step, {name: grid[None] for name, grid in grids.items()})
    for name, grid in grids.items():
      image_grid.save_png(grid, os.path.join(workdir, 'images', f'{name}_{step}.png'))
    return scalars

  def reconstruction_grids(state) -> dict[str, np.ndarray]:
    # Pictures: fixed test images above their reconstructions, plus the model's own.
    host_state = _unreplicate_to_host(state)
    originals = pixels.to_model_range(grid_images.astype(np.float32), input_range)
    recons, extra = jax.device_get(pictures(
        {'params': host_state.params, **host_state.model_state}, originals))
    grids = {'reconstructions': image_grid.side_by_side_grid(
        pixels.to_unit_range(originals, input_range), pixels.to_unit_range(recons, input_range))}
    grids.update({name: image_grid.tile(images) for name, images in extra.items()})
    return grids

  return loop.train(config, workdir, state, start_step=start_step,
                    num_train_steps=num_train_steps, p_train_step=p_train_step,
                    no_train_metrics=no_train_metrics,
                    train_batches=source.train_batches(start_step), evaluate=evaluate,
                    checkpointer=checkpointer, writer=writer, step_rng=step_rng, devices=devices)
