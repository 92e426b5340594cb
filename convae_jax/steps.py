"""The train state and the pmapped train and eval steps, shared by the trainer, inference,
benchmarks and tests: the model's whole contract with training, with no TensorFlow or TFDS
in it (the optimizer: optimizer.py; evaluation over a split: evaluation.py).

`make_train_step` and `make_eval_step` give the pmapped steps as the trainer runs them; a
train step is a function of (state, batch) -> (state, metrics), with randomness a function
of (seed, step, device) only.
"""
import dataclasses
import functools
from typing import Any

import flax
import flax.jax_utils
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax.training import train_state

from convae_jax import losses, metrics, optimizer, perceptual, pixels
from convae_jax.cpu import kernels as cpu_kernels

AXIS = 'batch'  # The pmap axis of the data-parallel devices.


def on_devices(model):
  """`model` as the pmapped steps run it: a model with an `axis_name` field (for statistics
  of the global batch, as Flax's BatchNorm) gets the devices' axis."""
  if 'axis_name' in {field.name for field in dataclasses.fields(model)}:
    return model.clone(axis_name=AXIS)
  return model


class TrainState(train_state.TrainState):
  # Variables other than params (batch statistics, EMA codebooks, ...), updated by the model.
  model_state: Any = flax.struct.field(default_factory=dict)


class EmaTrainState(TrainState):
  """A train state with an exponential moving average of the weights (config.ema_decay > 0).

  A subclass rather than an optional field, so that a state without EMA has no EMA entry
  in its checkpoints. `ema` is optax.ema's state (count, biased average); the weights are
  `ema_params(state, decay)`, the debiased average of the weights after each update.
  """
  ema: optax.EmaState = None


class TrainStateWithNetworks(TrainState):
  """A train state with the networks that loss terms train (config.losses: a discriminator),
  by term name, each a flax.training.train_state.TrainState with its own parameters and
  optimizer state. Subclasses rather than a field, as for the EMA: a state without them has
  no entry for them in its checkpoints, as before they existed."""
  networks: Any = flax.struct.field(default_factory=dict)


class EmaTrainStateWithNetworks(EmaTrainState):
  """An EmaTrainState with networks, as TrainStateWithNetworks."""
  networks: Any = flax.struct.field(default_factory=dict)


def networks_of(state: TrainState) -> dict:
  """The networks of the loss terms a state trains ({} for none)."""
  return getattr(state, 'networks', {})


def ema_params(state: TrainState, decay: float) -> Any:
  """The EMA weights of an EmaTrainState (its raw weights before any update)."""
  debiased = optax.tree.bias_correction(state.ema.ema, decay, jnp.maximum(state.ema.count, 1))
  return jax.tree.map(lambda ema, raw: jnp.where(state.ema.count > 0, ema, raw), debiased,
                      state.params)


def evaluated_weights(state: TrainState, decay: float, weights: str = 'ema') -> TrainState:
  """`state` with the weights to evaluate as its params: the EMA weights when it has them
  and `weights` is 'ema', else the raw ones."""
  if weights == 'ema' and isinstance(state, EmaTrainState):
    return state.replace(params=ema_params(state, decay))
  return state


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...], ema_decay: float = 0.0,
                       objective: losses.Objective | None = None) -> TrainState:
  """A fresh state; with `ema_decay` > 0 an EmaTrainState. The networks of `objective`'s
  terms are trained with an optimizer like the model's (`tx`)."""
  init_rngs = {name: jax.random.fold_in(rng, i + 1) for i, name in enumerate(model.rng_streams)}
  variables = dict(model.init({'params': rng, **init_rngs}, jnp.zeros((1,) + image_shape),
                              train=False))
  params = variables.pop('params')
  networks = objective.init_networks(rng, image_shape, tx) if objective else {}
  extra = {'networks': networks} if networks else {}
  if ema_decay > 0:
    cls = EmaTrainStateWithNetworks if networks else EmaTrainState
    return cls.create(apply_fn=model.apply, params=params, tx=tx, model_state=variables,
                      ema=optax.ema(ema_decay).init(params), **extra)
  cls = TrainStateWithNetworks if networks else TrainState
  return cls.create(apply_fn=model.apply, params=params, tx=tx, model_state=variables, **extra)


def tree_difference(expected, given) -> str | None:
  """The first difference between two trees of arrays (a key one lacks, or a shape), in words;
  None when they have the same keys and shapes."""
  flat = lambda tree: {jax.tree_util.keystr(path): np.shape(leaf)
                       for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  want, have = flat(expected), flat(given)
  for key in sorted(set(want) | set(have)):
    if key not in have:
      return f'{key} is missing'
    if key not in want:
      return f'{key} is not in the model'
    if tuple(want[key]) != tuple(have[key]):
      return f'{key} has shape {tuple(have[key])}, the model {tuple(want[key])}'
  return None


def variables_difference(target: TrainState, variables: dict) -> str | None:
  """The first difference between `variables` ({'params', 'model_state'}) and the state
  `target` (e.g. abstract_train_state's), in words; None when they fit."""
  for part in ('params', 'model_state'):
    difference = tree_difference(getattr(target, part), variables[part])
    if difference:
      return f'{part}: {difference}'
  return None


def abstract_train_state(model, tx: optax.GradientTransformation, image_shape: tuple[int, ...],
                         ema_decay: float = 0.0,
                         objective: losses.Objective | None = None) -> TrainState:
  """The train state's structure, shapes and dtypes, computing nothing: a restore target."""
  return jax.eval_shape(lambda: create_train_state(model, tx, jax.random.key(0), image_shape,
                                                   ema_decay, objective))


# Automatic micro-batching on CPU (config.micro_batches=0): this many parts per device, each
# of at least MIN_AUTO_PART images (smaller parts were not measured to pay).
AUTO_MICRO_BATCHES = 4
MIN_AUTO_PART = 8


def micro_batches(config: ml_collections.ConfigDict, model, num_devices: int, backend: str,
                  image_shape: tuple[int, ...]) -> int:
  """The micro-batches a step uses: config.micro_batches when positive; for 0 (auto), on
  CPU, the most parts up to AUTO_MICRO_BATCHES that divide the per-device batch into parts
  of MIN_AUTO_PART images or more, for a model whose step they leave exact
  (`splits_exactly`); else 1 (GPU and TPU: one part)."""
  if config.micro_batches > 0:
    return config.micro_batches
  if losses.Objective(config.get('losses')).adaptive:  # Its weight is of the whole batch.
    return 1
  per_device = config.batch_size // num_devices
  if backend != 'cpu' or not splits_exactly(model, image_shape):
    return 1
  return next((k for k in range(AUTO_MICRO_BATCHES, 1, -1)
               if per_device % k == 0 and per_device // k >= MIN_AUTO_PART), 1)


# Primitives of a model that reduces over the device axis (statistics of the global batch).
_COLLECTIVES = ('psum', 'pmax', 'pmin', 'all_gather', 'all_to_all', 'ppermute')


def splits_exactly(model, image_shape: tuple[int, ...]) -> bool:
  """Whether a train step averaged over micro-batches is the whole batch's step up to float
  rounding, read off the model's training pass: not where it keeps batch statistics (Flax's
  'batch_stats' collection) or reduces over the device axis it is given (a codebook's
  statistics, a batch entropy), since each part's statistics then differ from the batch's."""
  rngs = {name: jax.random.key(0) for name in ('params',) + tuple(model.rng_streams)}

  def training_pass(images):
    variables = model.init(rngs, images, train=False)
    mutable = [name for name in variables if name != 'params']
    on_devices(model).apply(variables, images, train=True, rngs=rngs, mutable=mutable)
    return variables

  images = jnp.zeros((1, 2) + tuple(image_shape))
  closed = jax.make_jaxpr(jax.vmap(training_pass, axis_name=AXIS), return_shape=True)
  jaxpr, variables = closed(images)
  return 'batch_stats' not in variables and not any(
      name in str(jaxpr) for name in _COLLECTIVES)


def step_rngs(model, base_rng: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
  """Keys for the model's random streams: a function of (seed, step, device) only."""
  rng = jax.random.fold_in(jax.random.fold_in(base_rng, step), jax.lax.axis_index(AXIS))
  return {name: jax.random.fold_in(rng, i) for i, name in enumerate(model.rng_streams)}


def _apply(model, state: TrainState, params, images, *, train: bool, rngs):
  """Runs the model; returns (output, updated model_state)."""
  variables = {'params': params, **state.model_state}
  mutable = list(state.model_state) if train else False
  if not mutable:
    return model.apply(variables, images, train=train, rngs=rngs), state.model_state
  return model.apply(variables, images, train=train, rngs=rngs, mutable=mutable)


def train_step(state: TrainState, images: jax.Array, base_rng: jax.Array, *, model,
               metrics_cls, input_range: tuple[float, float], skip_non_finite: bool = False,
               micro_batches: int = 1, skip_grad_norm_above: float = 0.0,
               learning_rate_fn: optax.Schedule | None = None, ema_decay: float = 0.0,
               accumulate_steps: int = 1, objective: losses.Objective | None = None,
               constants: Any = None) -> tuple[TrainState, Any]:
  """One optimizer step on this device's share of the global batch (inside pmap).

  `images` are uint8 pixels (see `model_input`), or float images in `input_range`.
  A step whose loss or gradients are not finite is flagged in the metrics; with
  `skip_non_finite` its update is dropped (the step counter still advances). With
  `micro_batches` > 1 the share is split into that many equal parts whose losses, gradients
  and model state are averaged: the parts are independent in the compiled step, so XLA:CPU,
  which runs each convolution on one core, runs them side by side. With
  `skip_grad_norm_above` > 0 a step whose gradient norm exceeds it is skipped too, and
  counted (`skipped_steps`; `last_kept_step` is the last step not skipped).
  `learning_rate_fn(step)` is logged as `learning_rate`. With `ema_decay` > 0 the state's
  EMA of the weights moves after each update (with `accumulate_steps` = k > 1, after every
  k-th step, when the optimizer updates).

  `objective` adds the terms of config.losses (reading `constants`, their frozen weights):
  an adaptive term's gradient is scaled by its adaptive weight, from the gradients averaged
  over devices; the networks the terms train take a step on the whole batch against the
  reconstructions, in the same step, each with its own optimizer state.
  """
  objective = objective or losses.Objective(None)
  constants = constants or {}
  rngs_of_step = step_rngs(model, base_rng, state.step)
  images = pixels.model_input(images, input_range)

  def loss_fn(params, images, rngs):
    """((the loss of the model's and the fixed terms, {adaptive term: its loss}),
    (metrics, model state, reconstruction))."""
    output, model_state = _apply(model, state, params, images, train=True, rngs=rngs)
    terms = {name: jnp.mean(term) for name, term in output.losses.items()}
    values = {f'loss_{name}': term for name, term in terms.items()}
    values.update({name: jnp.mean(value) for name, value in output.metrics.items()})
    codes = getattr(output, 'codes', None)  # A prior over codes has none of its own.
    if codes is not None:  # Per batch here; evaluation counts over the whole split.
      counts = metrics.code_counts(codes, model.num_codes)
      values.update({f'batch_{k}': v for k, v in metrics.code_statistics(counts).items()})
    loss, adaptive = sum(terms.values()), {}
    if objective:
      fixed, adaptive, term_values = objective.term_losses(
          images, output.reconstruction, state.step, constants, networks_of(state),
          input_range)
      loss = loss + sum(fixed.values()) if fixed else loss
      values.update(term_values)
    # The reconstruction is kept for the networks of loss terms only.
    reconstruction = output.reconstruction if networks_of(state) else None
    return (loss, adaptive), (values, model_state, reconstruction)

  def grads_of(images, rngs):
    """(loss, adaptive losses), aux, the gradient of the loss, {adaptive term: its gradient}."""
    if not objective.adaptive:
      def scalar_loss(params):
        (loss, adaptive), aux = loss_fn(params, images, rngs)
        return loss, (adaptive, aux)

      (loss, (adaptive, aux)), grads = jax.value_and_grad(scalar_loss, has_aux=True)(
          state.params)
      return (loss, adaptive), aux, grads, {}
    # One forward pass, one backward pass per gradient (the adaptive weight needs each).
    (loss, adaptive), vjp, aux = jax.vjp(lambda p: loss_fn(p, images, rngs), state.params,
                                         has_aux=True)
    zeros = jax.tree.map(jnp.zeros_like, adaptive)
    grads = vjp((jnp.ones_like(loss), zeros))[0]
    of_term = lambda name: vjp((jnp.zeros_like(loss), {**zeros, name: jnp.ones_like(loss)}))[0]
    return (loss, adaptive), aux, grads, {name: of_term(name) for name in adaptive}

  parts = []
  for i, part in enumerate(jnp.split(images, micro_batches)):
    rngs = rngs_of_step if i == 0 else {k: jax.random.fold_in(r, i)
                                        for k, r in rngs_of_step.items()}
    parts.append(grads_of(part, rngs))
  mean = lambda *xs: functools.reduce(jnp.add, xs) / len(xs)
  (loss, adaptive), (values, model_state, _), grads, adaptive_grads = jax.tree.map(
      lambda *xs: mean(*xs) if jnp.issubdtype(xs[0].dtype, jnp.inexact) else xs[0], *parts)
  grads = jax.lax.pmean(grads, axis_name=AXIS)
  if adaptive_grads:
    loss, grads, term_values = objective.add_adaptive_terms(
        loss, grads, adaptive, adaptive_grads, model.output_layer, AXIS)
    values.update(term_values)
  # Batch statistics, EMA codebooks, ...: the mean over devices, as if one device saw all.
  model_state = jax.tree.map(
      lambda x: jax.lax.pmean(x, AXIS) if jnp.issubdtype(x.dtype, jnp.inexact) else x,
      model_state)
  new_state = state.apply_gradients(grads=grads, model_state=model_state)
  networks_loss = jnp.zeros(())
  if networks_of(state):
    reconstruction = jnp.concatenate([aux[2] for _, aux, _, _ in parts])
    networks, networks_loss, network_values = objective.train_networks(
        state.networks, images, reconstruction, state.step, constants, input_range, AXIS)
    new_state = new_state.replace(networks=networks)
    values.update(network_values)
  if ema_decay > 0:  # With accumulation, only when the optimizer updated (mini step back to 0).
    updated = new_state.opt_state.mini_step == 0 if accumulate_steps > 1 else True
    _, ema = optax.ema(ema_decay).update(new_state.params, state.ema)
    new_state = new_state.replace(ema=jax.tree.map(
        lambda new, old: jnp.where(updated, new, old), ema, state.ema))
  grad_norm = optax.tree.norm(grads)
  loss_finite = jax.lax.pmin(jnp.isfinite(loss + networks_loss).astype(jnp.int32), AXIS) > 0
  finite = loss_finite & jnp.isfinite(grad_norm)
  skipping = skip_non_finite or skip_grad_norm_above > 0
  applied = finite if skip_non_finite else jnp.bool_(True)
  if skip_grad_norm_above > 0:
    applied &= grad_norm <= skip_grad_norm_above  # Also False for a NaN norm.
  if skipping:
    kept = jax.tree.map(lambda new, old: jnp.where(applied, new, old), new_state, state)
    new_state = kept.replace(step=new_state.step)
  values.update(loss=loss, grad_norm=grad_norm, param_norm=optax.tree.norm(new_state.params))
  values.update(non_finite_loss=1.0 - loss_finite, non_finite_grads=1.0 - jnp.isfinite(grad_norm),
                first_non_finite_step=jnp.where(finite, jnp.inf, state.step + 1.0),
                skipped_steps=1.0 - applied, last_kept_step=jnp.where(
                    applied, state.step + 1.0, -jnp.inf))
  if learning_rate_fn is not None:  # The rate of the update this step takes part in.
    step = state.step if accumulate_steps == 1 else (
        state.opt_state.gradient_step * accumulate_steps)
    values['learning_rate'] = learning_rate_fn(step)
  # Skipped steps don't pollute the averages; the flags and counts cover every step.
  # (Shape [1]: clu masks only values with a leading axis.)
  mask = applied[None] if skipping else None
  return new_state, metrics_cls.gather_from_model_output(
      mask=mask, **{name: jnp.reshape(value, (1,)) for name, value in values.items()})


def eval_step(state: TrainState, images: jax.Array, mask: jax.Array, base_rng: jax.Array, *,
              model, value_range: tuple[float, float], metrics_cls, lpips_params=None):
  """Per-image metrics of one eval batch; `mask` drops the padding of the last batch.
  `lpips_params`: the LPIPS weights of metrics.image_metrics (None: no lpips)."""
  images = pixels.model_input(images, value_range)
  output, _ = _apply(model, state, state.params, images, train=False,
                     rngs=step_rngs(model, base_rng, state.step))
  values = metrics.image_metrics(output.reconstruction, images, value_range, lpips_params)
  values['loss'] = sum(output.losses.values())
  values.update({f'loss_{name}': term for name, term in output.losses.items()})
  values.update(output.metrics)
  if output.codes is not None:
    values['codes'] = output.codes
  return metrics_cls.gather_from_model_output(mask=mask, **values)


def make_train_step(config: ml_collections.ConfigDict, model, image_shape: tuple[int, ...],
                    donate: bool = True, num_train_steps: int = 1, accumulate: bool = False):
  """`train_step` pmapped over the local devices (axis AXIS), as the trainer runs it:
  (replicated state, uint8 images [devices, batch, H, W, C], rng) -> (state, metrics).
  With `donate` the state passed in is consumed (its buffers hold the new state);
  `num_train_steps` is the run's length (for the learning-rate schedule it logs).

  With `accumulate` the step also carries the metric totals of the steps before it:
  (state, totals, images, rng) -> (state, totals merged with this step's metrics), starting
  from `train_metrics_class(...).empty()` replicated (the totals are not consumed, so the
  caller can wait on them). The merge then runs in the step's own program rather than as one
  more call per step, which on a CPU wakes the cores the step runs on.

  The terms of config.losses come with it: their constants (frozen weights) are bound as the
  keyword argument `constants`, replicated once here (pmap maps keyword arguments over their
  leading axis)."""
  objective = losses.Objective(config.get('losses'))
  metrics_cls = train_metrics_class(model, image_shape, objective)
  step = functools.partial(
      train_step, model=on_devices(model), metrics_cls=metrics_cls,
      # A prior over codes trains on integer codes, not pixels: no input range.
      input_range=tuple(config.input_range) if 'input_range' in config else None,
      skip_non_finite=config.on_non_finite == 'skip',
      micro_batches=micro_batches(config, model, jax.device_count(), jax.default_backend(),
                                  image_shape),
      skip_grad_norm_above=config.skip_grad_norm_above,
      learning_rate_fn=optimizer.learning_rate_schedule(config, num_train_steps),
      ema_decay=config.ema_decay, accumulate_steps=config.accumulate_steps,
      objective=objective)
  if not accumulate:
    p_step = jax.pmap(cpu_kernels.tracing_with(config.kernels, step), axis_name=AXIS,
                      in_axes=(0, 0, None), donate_argnums=(0,) if donate else ())
  else:

    def step_and_merge(state, totals, images, rng, constants=None):
      state, update = step(state, images, rng, constants=constants)
      return state, totals.merge(update)

    p_step = jax.pmap(cpu_kernels.tracing_with(config.kernels, step_and_merge), axis_name=AXIS,
                      in_axes=(0, 0, 0, None), donate_argnums=(0,) if donate else ())
  constants = objective.constants()
  if not jax.tree.leaves(constants):
    return p_step
  return functools.partial(p_step, constants=replicate(constants))


def train_metrics_class(model, image_shape: tuple[int, ...],
                        objective: losses.Objective | None = None) -> type[clu_metrics.Collection]:
  """The train step's metric collection (metrics.train_collection of the model's terms and
  metrics, and those of `objective`'s terms)."""
  return metrics.train_collection(metric_names(model, image_shape) + (
      objective.metric_names(image_shape) if objective else []))


def replicate(tree, devices=None):
  """`tree` copied to each of `devices` (default: the local ones) with the sharding of the
  pmapped steps' own outputs. flax.jax_utils.replicate's arrays have another, so a step
  first called with them compiles twice: for them, and for the state it returns."""
  return _as_step_output(flax.jax_utils.replicate(tree, devices))


_as_step_output = jax.pmap(lambda tree: tree, axis_name=AXIS)


def make_eval_step(model, input_range: tuple[float, float], image_shape: tuple[int, ...],
                   kernels: str = 'auto', lpips: bool = True):
  """`eval_step` pmapped over the local devices: (replicated state, images, mask, rng) ->
  averages of mse, psnr, ssim, lpips (if `lpips`, for images of 1 or 3 channels), loss and the
  model's own terms and metrics (and the code counts of a model with codes). `kernels` and
  `lpips`: config.kernels and config.eval_lpips of the run.

  The LPIPS weights are bound as the keyword argument `lpips_params`, replicated once here
  (pmap maps keyword arguments over their leading axis); a caller may pass its own."""
  measured = lpips and perceptual.measurable(image_shape[-1])
  names = (['loss', 'mse', 'psnr', 'ssim'] + (['lpips'] if measured else []) +
           metric_names(model, image_shape, train=False))
  step = functools.partial(eval_step, model=on_devices(model), value_range=input_range,
                           metrics_cls=metrics.eval_collection(names, model.num_codes))
  p_step = jax.pmap(cpu_kernels.tracing_with(kernels, step), axis_name=AXIS,
                    in_axes=(0, 0, 0, None))
  lpips_params = replicate(perceptual.weights(perceptual.EVAL_NETWORK)) if measured else None
  return functools.partial(p_step, lpips_params=lpips_params)


def metric_names(model, image_shape: tuple[int, ...], train: bool = True) -> list[str]:
  """Names of the model's loss terms (as 'loss_NAME') and metrics, read off its output (in
  training, also the per-batch code statistics of a model with codes)."""
  rngs = lambda: {s: jax.random.key(0) for s in ('params',) + tuple(model.rng_streams)}
  images = jnp.zeros((1,) + image_shape)
  variables = jax.eval_shape(lambda: model.init(rngs(), images, train=False))
  output = jax.eval_shape(lambda v: model.apply(v, images, train=False, rngs=rngs()), variables)
  names = [f'loss_{name}' for name in output.losses] + list(output.metrics)
  if train and getattr(output, 'codes', None) is not None:
    names += [f'batch_{name}' for name in ('codes_used', 'code_perplexity')]
  return names
