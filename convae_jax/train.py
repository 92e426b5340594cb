"""The one trainer: any registered autoencoder on any TFDS image dataset.

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
import json
import math
import os
import time
from typing import Any

import flax.jax_utils
import jax
import ml_collections
import numpy as np
from absl import logging
from clu import periodic_actions

from convae_jax import (checkpointing, config_checks, data, distributed, errors, evaluation,
                        image_grid, input_pipeline, losses, malloc_env, models, optimizer, paths,
                        pixels, preemption, steps, warm_start, workdir as workdir_lib,
                        writers)
from convae_jax.cpu import kernels as cpu_kernels


def _num_train_steps(config, num_train_examples: int) -> int:
  """config.num_train_steps, or num_epochs' steps rounded down to whole updates (a multiple
  of accumulate_steps)."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  k = config.accumulate_steps
  return max(k, int(config.num_epochs * num_train_examples // config.batch_size) // k * k)


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
    _check_warmup(config, _num_train_steps(config, info.num_examples[config.train_split]))
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
    _check_warmup(config, _num_train_steps(config, num_train_examples))
  num_train_steps = _num_train_steps(config, num_train_examples)

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
                 workdir, start_step, num_train_steps, _last_eval_line(workdir))
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
  last_eval = {}

  def evaluate(step: int, state) -> None:
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
    last_eval.update(scalars, step=step)
    logging.info('Evaluation at %s', _eval_summary(last_eval))
    if jax.process_index() > 0:
      return
    grids = {}
    if code_counts is not None:  # Each code's use over the whole eval split.
      grids['code_usage'] = image_grid.bar_chart(code_counts)
    if len(grid_images):
      grids.update(reconstruction_grids(evaluated))
    writer.write_images(step, {name: grid[None] for name, grid in grids.items()})
    for name, grid in grids.items():
      image_grid.save_png(grid, os.path.join(workdir, 'images', f'{name}_{step}.png'))

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

  train_iter = flax.jax_utils.prefetch_to_device(source.train_batches(start_step), 2, devices)
  hooks = []
  if jax.process_index() == 0 and config.profile_num_steps > 0:
    hooks.append(periodic_actions.Profile(logdir=workdir,
                                          num_profile_steps=config.profile_num_steps,
                                          first_profile=start_step + 10))
  progress = _Progress(start_step, num_train_steps, config.batch_size)

  state = steps.replicate(state, devices)
  train_metrics = no_train_metrics()
  two_steps_back = None  # The metrics of the step before the last.
  last_logged = last_kept = start_step
  logging.info('Training from step %d to %d', start_step, num_train_steps)
  try:
    with preemption.StopRequest() as stop:
      for step in range(start_step + 1, num_train_steps + 1):
        # The host runs at most two steps ahead of the device: each step queued further
        # ahead would hold its own buffers.
        jax.block_until_ready(two_steps_back)
        two_steps_back = train_metrics
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, train_metrics = p_train_step(state, train_metrics, next(train_iter), step_rng)
        if step == start_step + 1:  # Speed is timed from here: the first step compiles.
          jax.block_until_ready(train_metrics)
          progress.restart(step)
        for hook in hooks:
          hook(step)
        is_last = step == num_train_steps
        stopping = _stop_agreed(stop, step, config, is_last)
        save_now = step % config.checkpoint_every_steps == 0 or is_last or stopping
        # Logging also checks the values are finite, so it runs before every save.
        if step % config.log_every_steps == 0 or save_now:
          scalars = flax.jax_utils.unreplicate(train_metrics).compute()
          steps_per_sec = progress.log(step, float(scalars['loss']))
          last_kept = max(last_kept, float(scalars['last_kept_step']))
          _check_skips(step, last_kept, config, checkpointer)
          # With every step of the window skipped, its averages are of nothing (NaN).
          applied_any = float(scalars['skipped_steps']) < step - last_logged
          _check_finite(scalars, last_logged, step, config.on_non_finite, checkpointer,
                        applied_any)
          logged = {f'train/{k}': float(v) for k, v in scalars.items()
                    if k not in ('first_non_finite_step', 'last_kept_step')}
          logged['uptime'] = progress.seconds()  # Of this process's training.
          if steps_per_sec is not None:
            logged['steps_per_sec'] = steps_per_sec
          writer.write_scalars(step, logged)
          train_metrics, last_logged = no_train_metrics(), step
        if (step % config.eval_every_steps == 0 or is_last) and not stopping:
          evaluate(step, state)
        if save_now:
          checkpointer.save(step, _unreplicate_to_host(state))
        if stopping:
          raise preemption.Preempted(step, stop.signal_name or 'a signal to another process')
  finally:
    checkpointer.close()
    writer.flush()
    writer.close()
  logging.info('Done: trained to step %d of %d in %s. Final evaluation: %s. Outputs in %s: '
               'metrics.jsonl, images/, checkpoints/%d, TensorBoard events', num_train_steps,
               num_train_steps, progress.elapsed(), _eval_summary(last_eval), workdir,
               num_train_steps)
  return _unreplicate_to_host(state)


class _Progress:
  """One log line per log step, to show a run is alive: step, loss, speed since the last line
  (compilation left out), time left."""

  def __init__(self, start_step: int, num_train_steps: int, batch_size: int):
    self._start = self._last = (time.monotonic(), start_step)
    self._num_train_steps, self._batch_size = num_train_steps, batch_size

  def restart(self, step: int) -> None:
    """Times the next line's window from now, after `step`."""
    self._last = (time.monotonic(), step)

  def log(self, step: int, loss: float) -> float | None:
    """Logs the line; returns the window's steps per second (None for an empty window)."""
    now = time.monotonic()
    seconds, steps = now - self._last[0], step - self._last[1]
    self._last = (now, step)
    if steps <= 0 or seconds <= 0:
      return None
    left = (self._num_train_steps - step) * seconds / steps
    if jax.process_index() == 0:
      logging.info('Step %d of %d (%.0f%%): loss %.4g, %.0f images/s, %s left', step,
                   self._num_train_steps, 100 * step / self._num_train_steps, loss,
                   steps * self._batch_size / seconds, _duration(left))
    return steps / seconds

  def seconds(self) -> float:
    return time.monotonic() - self._start[0]

  def elapsed(self) -> str:
    return _duration(self.seconds())


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s' if minutes else (
      f'{seconds}s')


def _eval_summary(scalars: dict[str, float]) -> str:
  if not scalars:
    return '(none)'
  shown = ', '.join(f'{k}={v:.4g}' for k, v in sorted(scalars.items()) if k.startswith('eval/'))
  return f'step {scalars["step"]}: {shown}'


def _stop_agreed(stop: preemption.StopRequest, step: int, config, is_last: bool) -> bool:
  """Whether to stop after this step on a signal. All processes must stop at the same step,
  so with several they compare at log and save steps only, where the host waits anyway."""
  if jax.process_count() == 1:
    return stop.requested
  if step % config.log_every_steps and step % config.checkpoint_every_steps and not is_last:
    return False
  return distributed.any_process(stop.requested)


def _check_finite(scalars: dict[str, Any], last_logged: int, step: int, on_non_finite: str,
                  checkpointer: checkpointing.Checkpointer, applied_any: bool = True) -> None:
  """Stops the run on non-finite values unless they are skipped (then it only logs them)."""
  bad = [what for what, flag in (('loss', 'non_finite_loss'), ('gradients', 'non_finite_grads'))
         if float(scalars[flag]) > 0]
  if not bad and on_non_finite == 'stop' and applied_any:  # E.g. parameters that overflowed.
    bad = [f'train/{k}' for k, v in scalars.items()
           if k not in ('first_non_finite_step', 'last_kept_step') and
           not math.isfinite(float(v))]
  if not bad:
    return
  first = float(scalars['first_non_finite_step'])
  where = (f'first at step {int(first)}' if math.isfinite(first) else
           f'in steps {last_logged + 1}-{step}')
  if on_non_finite == 'skip':
    logging.warning('Step %d: skipped updates with non-finite %s (%s)', step, ' and '.join(bad),
                    where)
    return
  raise FloatingPointError(
      f'step {step}: non-finite {" and ".join(bad)} ({where}); stopped without saving (last '
      f'checkpoint: step {checkpointer.latest_step()}). Lower the learning rate, or set '
      '--config.on_non_finite=skip to skip such steps')


def _check_warmup(config, num_train_steps: int) -> None:
  warmup = optimizer.warmup_steps(config, num_train_steps)
  if warmup >= num_train_steps:
    raise config_checks.ConfigError(
        f'config.warmup_steps: a warm-up of {warmup} steps is not shorter than the run '
        f'({num_train_steps} steps); lower --config.warmup_steps (or warmup_fraction)')


def _check_skips(step: int, last_kept: float, config, checkpointer) -> None:
  """Stops a run whose updates have been skipped too many times in a row."""
  skipped = step - last_kept
  if config.skip_grad_norm_above > 0 and skipped > config.max_consecutive_skips:
    raise FloatingPointError(
        f'step {step}: the last {int(skipped)} updates were skipped (gradient norm above '
        f'config.skip_grad_norm_above={config.skip_grad_norm_above}), more than '
        f'config.max_consecutive_skips={config.max_consecutive_skips} in a row; stopped '
        f'without saving (last checkpoint: step {checkpointer.latest_step()}). Raise the '
        'threshold or lower the learning rate')


def _last_eval_line(workdir: str) -> str:
  path = os.path.join(workdir, 'metrics.jsonl')
  last = {}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        if '"eval/' in line:
          last = json.loads(line)
  return _eval_summary(last)
