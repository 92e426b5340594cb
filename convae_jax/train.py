"""The one trainer: any registered autoencoder on any TFDS image dataset.

`train_and_evaluate(config, workdir)` trains with a jitted, pmapped step over the local
devices (gradients and metrics averaged with `lax.pmean`), evaluates on the whole eval
split, writes metrics and pictures, checkpoints with Orbax and resumes from the latest
checkpoint when launched again on the same workdir.
"""
import functools
import json
import math
import os
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

from convae_jax import checkpointing, config_checks, image_grid, input_pipeline, metrics, writers


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


def train_step(state: TrainState, images: jax.Array, base_rng: jax.Array, *, model,
               metrics_cls) -> tuple[TrainState, Any]:
  """One optimizer step on this device's share of the global batch (inside pmap)."""

  def loss_fn(params):
    output, model_state = _apply(model, state, params, images, train=True,
                                 rngs=_step_rngs(model, base_rng, state.step))
    loss = sum(jnp.mean(term) for term in output.losses.values())
    return loss, (output, model_state)

  (loss, (output, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, axis_name='batch')
  # Batch statistics, EMA codebooks, ...: the mean over devices, as if one device saw all.
  model_state = jax.tree.map(
      lambda x: jax.lax.pmean(x, 'batch') if jnp.issubdtype(x.dtype, jnp.inexact) else x,
      model_state)
  new_state = state.apply_gradients(grads=grads, model_state=model_state)
  values = {'loss': loss, 'grad_norm': optax.global_norm(grads),
            'param_norm': optax.global_norm(new_state.params)}
  values.update({f'loss_{name}': jnp.mean(term) for name, term in output.losses.items()})
  values.update({name: jnp.mean(value) for name, value in output.metrics.items()})
  return new_state, metrics_cls.gather_from_model_output(**values)


def eval_step(state: TrainState, images: jax.Array, mask: jax.Array, base_rng: jax.Array, *,
              model, value_range: tuple[float, float], metrics_cls):
  """Per-image metrics of one eval batch; `mask` drops the padding of the last batch."""
  output, _ = _apply(model, state, state.params, images, train=False,
                     rngs=_step_rngs(model, base_rng, state.step))
  values = metrics.image_metrics(output.reconstruction, images, value_range)
  values['loss'] = sum(output.losses.values())
  values.update({f'loss_{name}': term for name, term in output.losses.items()})
  values.update(output.metrics)
  return metrics_cls.gather_from_model_output(mask=mask, **values)


def _metric_names(model, image_shape) -> tuple[list[str], list[str]]:
  """Names of the train and eval metrics, read off the model's output structure."""
  variables = jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0),
                          **{s: jax.random.key(0) for s in model.rng_streams}},
                         jnp.zeros((1,) + image_shape), train=False))
  output = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((1,) + image_shape), train=False,
                            rngs={s: jax.random.key(0) for s in model.rng_streams}), variables)
  terms = [f'loss_{name}' for name in output.losses] + list(output.metrics)
  return (['loss', 'grad_norm', 'param_norm'] + terms,
          ['loss', 'mse', 'psnr', 'ssim'] + terms)


def _unreplicate_to_host(tree):
  return jax.device_get(flax.jax_utils.unreplicate(tree))


def _save_config(config: ml_collections.ConfigDict, workdir: str, start_step: int) -> None:
  """Writes the resolved config; a relaunch with other settings adds a file, never overwrites."""
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      if f.read() == text:
        return
    path = os.path.join(workdir, f'config.resumed_at_step_{start_step}.json')
    logging.warning('Config differs from the saved one; saving it as %s', path)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


def _check_finite(step: int, scalars: dict[str, float], checkpointer) -> None:
  bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
  if bad:
    raise FloatingPointError(
        f'step {step}: non-finite {", ".join(f"{k}={v}" for k, v in bad.items())}; stopped '
        f'without saving (last checkpoint: step {checkpointer.latest_step()})')


def _num_train_steps(config, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(1, int(config.num_epochs * num_train_examples // config.batch_size))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config`'s model in `workdir`, resuming from its latest checkpoint if any."""
  devices = jax.local_devices()
  model = config_checks.check(config, len(devices) * jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  input_range = tuple(config.input_range)

  train_split = input_pipeline.load_split(config.dataset, config.train_split, config.data_dir)
  eval_split = input_pipeline.load_split(config.dataset, config.eval_split, config.data_dir)
  image_shape = train_split.images.shape[1:]
  _check_image_shape(model, image_shape)
  num_train_steps = _num_train_steps(config, train_split.num_examples)
  logging.info('%d train / %d eval images of shape %s; %d steps of %d on %d devices',
               train_split.num_examples, eval_split.num_examples, image_shape, num_train_steps,
               config.batch_size, jax.device_count())

  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state = create_train_state(model, create_optimizer(config), init_rng, image_shape)
  checkpointer = checkpointing.Checkpointer(workdir, config.max_to_keep)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    logging.info('Resumed from %s at step %d', checkpointer.directory, int(state.step))
  start_step = int(state.step)
  _save_config(config, workdir, start_step)
  writer = writers.create_writer(workdir)
  if start_step >= num_train_steps:
    logging.info('Already trained to step %d of %d in %s; nothing to do. Last metrics: %s',
                 start_step, num_train_steps, workdir, _last_eval_line(workdir))
    checkpointer.close()
    writer.close()
    return state

  train_names, eval_names = _metric_names(model, image_shape)
  train_metrics_cls = metrics.averages_collection(train_names)
  eval_metrics_cls = metrics.averages_collection(eval_names)
  p_train_step = jax.pmap(
      functools.partial(train_step, model=model, metrics_cls=train_metrics_cls),
      axis_name='batch', in_axes=(0, 0, None), donate_argnums=(0,))
  p_eval_step = jax.pmap(
      functools.partial(eval_step, model=model, value_range=input_range,
                        metrics_cls=eval_metrics_cls),
      axis_name='batch', in_axes=(0, 0, 0, None))
  pictures = jax.jit(lambda variables, x: model.apply(
      variables, x, rngs={s: jax.random.fold_in(step_rng, i)
                          for i, s in enumerate(model.rng_streams)},
      method=lambda m, x: (m(x, train=False).reconstruction, m.pictures(x))))
  grid_indices = np.sort(np.random.default_rng(config.seed).choice(
      eval_split.num_examples, min(config.num_grid_images, eval_split.num_examples),
      replace=False))

  def evaluate(step: int, state) -> None:
    batches = input_pipeline.eval_batches(
        eval_split, global_batch_size=config.eval_batch_size, input_range=input_range,
        num_local_devices=len(devices), process_index=jax.process_index(),
        process_count=jax.process_count())
    totals = None
    for images, mask in flax.jax_utils.prefetch_to_device(batches, 2, devices):
      update = p_eval_step(state, images, mask, step_rng)
      totals = update if totals is None else totals.merge(update)
    scalars = {f'eval/{k}': float(v)
               for k, v in flax.jax_utils.unreplicate(totals).compute().items()}
    writer.write_scalars(step, scalars)
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
    if jax.process_index() == 0:
      for name, grid in grids.items():
        image_grid.save_png(grid, os.path.join(workdir, 'images', f'{name}_{step}.png'))

  train_iter = flax.jax_utils.prefetch_to_device(input_pipeline.train_batches(
      train_split, global_batch_size=config.batch_size, seed=config.seed, start_step=start_step,
      input_range=input_range, num_local_devices=len(devices),
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

  state = flax.jax_utils.replicate(state, devices)
  train_metrics = None
  logging.info('Training from step %d to %d', start_step, num_train_steps)
  try:
    for step in range(start_step + 1, num_train_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, update = p_train_step(state, next(train_iter), step_rng)
      train_metrics = update if train_metrics is None else train_metrics.merge(update)
      for hook in hooks:
        hook(step)
      is_last = step == num_train_steps
      save_now = step % config.checkpoint_every_steps == 0 or is_last
      # Logging also checks the values are finite, so it runs before every save.
      if step % config.log_every_steps == 0 or save_now:
        scalars = {f'train/{k}': float(v)
                   for k, v in flax.jax_utils.unreplicate(train_metrics).compute().items()}
        _check_finite(step, scalars, checkpointer)
        writer.write_scalars(step, scalars)
        train_metrics = None
      if step % config.eval_every_steps == 0 or is_last:
        evaluate(step, state)
      if save_now:
        checkpointer.save(step, _unreplicate_to_host(state))
  finally:
    checkpointer.close()
    writer.flush()
    writer.close()
  return _unreplicate_to_host(state)


def _check_image_shape(model, image_shape) -> None:
  factor = 2**model.num_downsamplings
  if image_shape[0] % factor or image_shape[1] % factor:
    raise config_checks.ConfigError(
        f'images of {image_shape[0]}x{image_shape[1]} do not divide by {factor}, the '
        'downsampling factor of config.model; use a model with fewer downsamplings')


def _last_eval_line(workdir: str) -> str:
  path = os.path.join(workdir, 'metrics.jsonl')
  last = '(no metrics.jsonl)'
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        if '"eval/' in line:
          last = json.loads(line)
  return str(last)
