"""The one trainer: any registered autoencoder on any TFDS image dataset.

`train_and_evaluate(config, workdir)` trains with a jitted, pmapped step over the local
devices (gradients and metrics averaged with `lax.pmean`), evaluates on the whole eval
split, writes metrics and pictures, checkpoints with Orbax and resumes from the newest
readable checkpoint when launched again on the same workdir. Data order and randomness are
functions of (seed, step), so a resumed run ends bitwise where an unstopped one would.
Multi-process runs (see distributed.py) are the same program in every process: pmap's
collectives span all processes' devices, each process feeds its slice of each global batch,
and process 0 alone writes metrics, pictures and the config.
"""
import contextlib
import functools
import json
import math
import os
import time
from typing import Any

import flax
import flax.jax_utils
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from flax.training import train_state

from convae_jax import (checkpointing, config_checks, distributed, errors, image_grid,
                        input_pipeline, metrics, paths, preemption, workdir as workdir_lib,
                        writers)


class TrainState(train_state.TrainState):
  # Variables other than params (batch statistics, EMA codebooks, ...), updated by the model.
  model_state: Any = flax.struct.field(default_factory=dict)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return {'adam': optax.adam, 'adamw': optax.adamw, 'sgd': optax.sgd}[config.optimizer](
      config.learning_rate)


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...]) -> TrainState:
  init_rngs = {name: jax.random.fold_in(rng, i + 1) for i, name in enumerate(model.rng_streams)}
  variables = dict(model.init({'params': rng, **init_rngs}, jnp.zeros((1,) + image_shape),
                              train=False))
  params = variables.pop('params')
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx, model_state=variables)


def abstract_train_state(model, tx: optax.GradientTransformation,
                         image_shape: tuple[int, ...]) -> TrainState:
  """The train state's structure, shapes and dtypes, computing nothing: a restore target."""
  return jax.eval_shape(lambda: create_train_state(model, tx, jax.random.key(0), image_shape))


def _step_rngs(model, base_rng: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
  """Keys for the model's random streams: a function of (seed, step, device) only."""
  rng = jax.random.fold_in(jax.random.fold_in(base_rng, step), jax.lax.axis_index('batch'))
  return {name: jax.random.fold_in(rng, i) for i, name in enumerate(model.rng_streams)}


def _apply(model, state: TrainState, params, images, *, train: bool, rngs):
  """Runs the model; returns (output, updated model_state)."""
  variables = {'params': params, **state.model_state}
  mutable = list(state.model_state) if train else False
  if not mutable:
    return model.apply(variables, images, train=train, rngs=rngs), state.model_state
  return model.apply(variables, images, train=train, rngs=rngs, mutable=mutable)


def model_input(images: jax.Array, input_range: tuple[float, float]) -> jax.Array:
  """The input pipeline's uint8 pixels as float32 in `input_range`, computed on the device.

  Float images are taken to be in `input_range` already.
  """
  if images.dtype != jnp.uint8:
    return images
  return input_pipeline.to_model_range(images.astype(jnp.float32), input_range)


def train_step(state: TrainState, images: jax.Array, base_rng: jax.Array, *, model,
               metrics_cls, input_range: tuple[float, float], skip_non_finite: bool = False,
               micro_batches: int = 1) -> tuple[TrainState, Any]:
  """One optimizer step on this device's share of the global batch (inside pmap).

  `images` are uint8 pixels (see `model_input`), or float images in `input_range`.
  A step whose loss or gradients are not finite is flagged in the metrics; with
  `skip_non_finite` its update is dropped (the step counter still advances). With
  `micro_batches` > 1 the share is split into that many equal parts whose losses, gradients
  and model state are averaged: the parts are independent in the compiled step, so XLA:CPU,
  which runs each convolution on one core, runs them side by side.
  """
  step_rngs = _step_rngs(model, base_rng, state.step)
  images = model_input(images, input_range)

  def loss_fn(params, images, rngs):
    output, model_state = _apply(model, state, params, images, train=True, rngs=rngs)
    terms = {name: jnp.mean(term) for name, term in output.losses.items()}
    values = {f'loss_{name}': term for name, term in terms.items()}
    values.update({name: jnp.mean(value) for name, value in output.metrics.items()})
    return sum(terms.values()), (values, model_state)

  parts = []
  for i, part in enumerate(jnp.split(images, micro_batches)):
    rngs = step_rngs if i == 0 else {k: jax.random.fold_in(r, i) for k, r in step_rngs.items()}
    parts.append(jax.value_and_grad(loss_fn, has_aux=True)(state.params, part, rngs))
  mean = lambda *xs: functools.reduce(jnp.add, xs) / len(xs)
  (loss, (values, model_state)), grads = jax.tree.map(
      lambda *xs: mean(*xs) if jnp.issubdtype(xs[0].dtype, jnp.inexact) else xs[0], *parts)
  grads = jax.lax.pmean(grads, axis_name='batch')
  # Batch statistics, EMA codebooks, ...: the mean over devices, as if one device saw all.
  model_state = jax.tree.map(
      lambda x: jax.lax.pmean(x, 'batch') if jnp.issubdtype(x.dtype, jnp.inexact) else x,
      model_state)
  new_state = state.apply_gradients(grads=grads, model_state=model_state)
  grad_norm = optax.global_norm(grads)
  loss_finite = jax.lax.pmin(jnp.isfinite(loss).astype(jnp.int32), 'batch') > 0
  finite = loss_finite & jnp.isfinite(grad_norm)
  if skip_non_finite:
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    new_state = kept.replace(step=new_state.step)
  values.update(loss=loss, grad_norm=grad_norm, param_norm=optax.global_norm(new_state.params))
  values.update(non_finite_loss=1.0 - loss_finite, non_finite_grads=1.0 - jnp.isfinite(grad_norm),
                first_non_finite_step=jnp.where(finite, jnp.inf, state.step + 1.0))
  # Skipped steps don't pollute the averages; the non_finite_* flags count every step.
  # (Shape [1]: clu masks only values with a leading axis.)
  mask = finite[None] if skip_non_finite else None
  return new_state, metrics_cls.gather_from_model_output(
      mask=mask, **{name: jnp.reshape(value, (1,)) for name, value in values.items()})


def eval_step(state: TrainState, images: jax.Array, mask: jax.Array, base_rng: jax.Array, *,
              model, value_range: tuple[float, float], metrics_cls):
  """Per-image metrics of one eval batch; `mask` drops the padding of the last batch."""
  images = model_input(images, value_range)
  output, _ = _apply(model, state, state.params, images, train=False,
                     rngs=_step_rngs(model, base_rng, state.step))
  values = metrics.image_metrics(output.reconstruction, images, value_range)
  values['loss'] = sum(output.losses.values())
  values.update({f'loss_{name}': term for name, term in output.losses.items()})
  values.update(output.metrics)
  return metrics_cls.gather_from_model_output(mask=mask, **values)


def make_p_eval_step(model, input_range: tuple[float, float], model_names: list[str]):
  """`eval_step` pmapped over the local devices: averages of mse, psnr, ssim, loss, model_names."""
  metrics_cls = metrics.averages_collection(['loss', 'mse', 'psnr', 'ssim'] + list(model_names))
  return jax.pmap(functools.partial(eval_step, model=model, value_range=input_range,
                                    metrics_cls=metrics_cls),
                  axis_name='batch', in_axes=(0, 0, 0, None))


def evaluate_split(p_eval_step, state: TrainState, split: input_pipeline.Split, *,
                   eval_batch_size: int, devices, base_rng: jax.Array) -> dict[str, float]:
  """Metrics of the replicated `state` over the whole `split`, each image counted once."""
  batches = input_pipeline.eval_batches(
      split, global_batch_size=eval_batch_size, num_local_devices=len(devices),
      process_index=jax.process_index(), process_count=jax.process_count())
  totals = None
  for i, (images, mask) in enumerate(flax.jax_utils.prefetch_to_device(batches, 2, devices)):
    # Each batch its own key: a model's noise or posterior sample does not repeat per batch.
    update = p_eval_step(state, images, mask, jax.random.fold_in(base_rng, i))
    totals = update if totals is None else totals.merge(update)
  return {k: float(v) for k, v in flax.jax_utils.unreplicate(totals).compute().items()}


def _metric_names(model, image_shape) -> list[str]:
  """Names of the model's loss terms (as 'loss_NAME') and metrics, read off its output."""
  rngs = lambda: {s: jax.random.key(0) for s in ('params',) + tuple(model.rng_streams)}
  images = jnp.zeros((1,) + image_shape)
  variables = jax.eval_shape(lambda: model.init(rngs(), images, train=False))
  output = jax.eval_shape(lambda v: model.apply(v, images, train=False, rngs=rngs()), variables)
  return [f'loss_{name}' for name in output.losses] + list(output.metrics)


def _num_train_steps(config, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(1, int(config.num_epochs * num_train_examples // config.batch_size))


def _check_image_shape(model, image_shape) -> None:
  factor = 2**model.num_downsamplings
  if image_shape[0] % factor or image_shape[1] % factor:
    raise config_checks.ConfigError(
        f'images of {image_shape[0]}x{image_shape[1]} do not divide by {factor}, the '
        'downsampling factor of config.model; use a model with fewer downsamplings')


def _unreplicate_to_host(tree):
  return jax.device_get(flax.jax_utils.unreplicate(tree))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
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
  model = config_checks.check(config, jax.device_count(), jax.process_count())
  workdir = paths.check_dir(workdir, '--workdir')
  distributed.check_equal_local_devices()
  # Process 0 prepares a missing dataset first, so processes never build it side by side.
  info = distributed.process_0_first(lambda: input_pipeline.describe(
      config.dataset, config.data_dir,
      {'config.train_split': config.train_split, 'config.eval_split': config.eval_split}),
      errors.UserError)
  if info.image_shape is not None:
    _check_image_shape(model, info.image_shape)
  logging.info('XLA_FLAGS: %s', os.environ.get('XLA_FLAGS', '(none)'))
  logging.info('Config:\n%s', config)
  with contextlib.ExitStack() as stack:
    # Process 0 holds the lock for the run (the others share its workdir); if it cannot,
    # every process stops.
    with distributed.same_outcome(workdir_lib.WorkdirBusyError):
      if jax.process_index() == 0:
        stack.enter_context(workdir_lib.WorkdirLock(workdir))
    return _train_locked(config, workdir, model, info)


def _train_locked(config, workdir: str, model, info: input_pipeline.DatasetInfo) -> TrainState:
  devices = jax.local_devices()
  input_range = tuple(config.input_range)
  splits = None
  image_shape = info.image_shape
  num_train_examples = info.num_examples[config.train_split]
  if image_shape is None or num_train_examples is None:  # The metadata does not say: read.
    splits = _load_splits(config)
    image_shape = splits[0].images.shape[1:]
    num_train_examples = splits[0].num_examples
    _check_image_shape(model, image_shape)
  num_train_steps = _num_train_steps(config, num_train_examples)

  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  tx = create_optimizer(config)
  checkpointer = checkpointing.Checkpointer(workdir, config.max_to_keep)
  state = checkpointer.restore_newest_readable(abstract_train_state(model, tx, image_shape))
  if state is None:
    state = create_train_state(model, tx, init_rng, image_shape)
  else:
    logging.info('Resumed from %s at step %d', checkpointer.directory, int(state.step))
  start_step = int(state.step)
  if start_step >= num_train_steps:  # Decided before any data is read or anything written.
    checkpointer.close()
    logging.info('Nothing to do: %s is already trained to step %d of %d. Last evaluation: %s',
                 workdir, start_step, num_train_steps, _last_eval_line(workdir))
    return state

  if splits is None:
    splits = _load_splits(config)
  train_split, eval_split = splits
  logging.info('%d train / %d eval images of shape %s; %d steps of %d on %d %s devices',
               train_split.num_examples, eval_split.num_examples, image_shape, num_train_steps,
               config.batch_size, jax.device_count(), jax.default_backend())
  if jax.process_index() == 0:
    workdir_lib.save_config(config, workdir, start_step)
  writer = writers.create_writer(workdir)

  model_names = _metric_names(model, image_shape)
  train_metrics_cls = metrics.train_collection(model_names)
  p_train_step = jax.pmap(
      functools.partial(train_step, model=model, metrics_cls=train_metrics_cls,
                        input_range=input_range, skip_non_finite=config.on_non_finite == 'skip',
                        micro_batches=config.micro_batches),
      axis_name='batch', in_axes=(0, 0, None), donate_argnums=(0,))
  p_eval_step = make_p_eval_step(model, input_range, model_names)
  pictures = jax.jit(lambda variables, x: model.apply(
      variables, x, rngs={s: jax.random.fold_in(step_rng, i)
                          for i, s in enumerate(model.rng_streams)},
      method=lambda m, x: (m(x, train=False).reconstruction, m.pictures(x))))
  grid_indices = np.sort(np.random.default_rng(config.seed).choice(
      eval_split.num_examples, min(config.num_grid_images, eval_split.num_examples),
      replace=False))
  last_eval = {}

  def evaluate(step: int, state) -> None:
    scalars = {f'eval/{k}': v for k, v in evaluate_split(
        p_eval_step, state, eval_split, eval_batch_size=config.eval_batch_size,
        devices=devices, base_rng=step_rng).items()}
    writer.write_scalars(step, scalars)
    last_eval.update(scalars, step=step)
    if jax.process_index() > 0 or not len(grid_indices):
      return
    # Pictures: fixed test images above their reconstructions, plus the model's own.
    host_state = _unreplicate_to_host(state)
    originals = input_pipeline.to_model_range(
        eval_split.images[grid_indices].astype(np.float32), input_range)
    recons, extra = jax.device_get(pictures(
        {'params': host_state.params, **host_state.model_state}, originals))
    grids = {'reconstructions': image_grid.side_by_side_grid(
        metrics.to_unit_range(originals, input_range), metrics.to_unit_range(recons, input_range))}
    grids.update({name: image_grid.tile(images) for name, images in extra.items()})
    writer.write_images(step, {name: grid[None] for name, grid in grids.items()})
    for name, grid in grids.items():
      image_grid.save_png(grid, os.path.join(workdir, 'images', f'{name}_{step}.png'))

  train_iter = flax.jax_utils.prefetch_to_device(input_pipeline.train_batches(
      train_split, global_batch_size=config.batch_size, seed=config.seed, start_step=start_step,
      num_local_devices=len(devices),
      process_index=jax.process_index(), process_count=jax.process_count()), 2, devices)
  hooks = []
  if jax.process_index() == 0:
    hooks.append(periodic_actions.ReportProgress(
        num_train_steps=num_train_steps, writer=writer, every_steps=config.log_every_steps,
        every_secs=None))
    if config.profile_num_steps > 0:
      hooks.append(periodic_actions.Profile(logdir=workdir,
                                            num_profile_steps=config.profile_num_steps,
                                            first_profile=start_step + 10))
  progress = _Progress(start_step, num_train_steps, config.batch_size)

  state = flax.jax_utils.replicate(state, devices)
  # One dispatch per step for the running averages (an eager merge is ~20 small ops).
  p_merge = jax.pmap(lambda totals, update: totals.merge(update), donate_argnums=(0,))
  train_metrics = None
  last_logged = start_step
  logging.info('Training from step %d to %d', start_step, num_train_steps)
  try:
    with preemption.StopRequest() as stop:
      for step in range(start_step + 1, num_train_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, update = p_train_step(state, next(train_iter), step_rng)
        train_metrics = update if train_metrics is None else p_merge(train_metrics, update)
        for hook in hooks:
          hook(step)
        is_last = step == num_train_steps
        stopping = _stop_agreed(stop, step, config, is_last)
        save_now = step % config.checkpoint_every_steps == 0 or is_last or stopping
        # Logging also checks the values are finite, so it runs before every save.
        if step % config.log_every_steps == 0 or save_now:
          scalars = flax.jax_utils.unreplicate(train_metrics).compute()
          progress.log(step)
          _check_finite(scalars, last_logged, step, config.on_non_finite, checkpointer)
          writer.write_scalars(step, {f'train/{k}': float(v) for k, v in scalars.items()
                                      if k != 'first_non_finite_step'})
          train_metrics, last_logged = None, step
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


def _load_splits(config) -> tuple[input_pipeline.Split, input_pipeline.Split]:
  return (input_pipeline.load_split(config.dataset, config.train_split, config.data_dir),
          input_pipeline.load_split(config.dataset, config.eval_split, config.data_dir))


class _Progress:
  """Log lines that show a run is alive: step, speed since the last line, time left."""

  def __init__(self, start_step: int, num_train_steps: int, batch_size: int):
    self._start = self._last = (time.monotonic(), start_step)
    self._num_train_steps, self._batch_size = num_train_steps, batch_size

  def log(self, step: int) -> None:
    now = time.monotonic()
    seconds, steps = now - self._last[0], step - self._last[1]
    self._last = (now, step)
    if jax.process_index() > 0 or steps <= 0 or seconds <= 0:
      return
    left = (self._num_train_steps - step) * seconds / steps
    logging.info('Step %d of %d (%.0f%%): %.0f images/s, %s left', step, self._num_train_steps,
                 100 * step / self._num_train_steps, steps * self._batch_size / seconds,
                 _duration(left))

  def elapsed(self) -> str:
    return _duration(time.monotonic() - self._start[0])


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
                  checkpointer: checkpointing.Checkpointer) -> None:
  """Stops the run on non-finite values unless they are skipped (then it only logs them)."""
  bad = [what for what, flag in (('loss', 'non_finite_loss'), ('gradients', 'non_finite_grads'))
         if float(scalars[flag]) > 0]
  if not bad and on_non_finite == 'stop':  # E.g. parameters that overflowed.
    bad = [f'train/{k}' for k, v in scalars.items()
           if k != 'first_non_finite_step' and not math.isfinite(float(v))]
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


def _last_eval_line(workdir: str) -> str:
  path = os.path.join(workdir, 'metrics.jsonl')
  last = {}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        if '"eval/' in line:
          last = json.loads(line)
  return _eval_summary(last)
