"""The optimizer of a config: optax's optimizer, learning-rate schedule, weight-decay mask,
clipping and gradient accumulation, as config.optimizer, config.schedule and the rest say."""
from typing import Any

import jax
import ml_collections
import optax


# config.optimizer: its optax optimizer, from the learning rate (a schedule) and the config.
OPTIMIZERS = {
    'adam': lambda lr, c: optax.adam(lr, c.adam_b1, c.adam_b2, c.adam_eps),
    'adamw': lambda lr, c: optax.adamw(lr, c.adam_b1, c.adam_b2, c.adam_eps,
                                       weight_decay=c.weight_decay, mask=decays_weight),
    'sgd': lambda lr, c: optax.sgd(lr, momentum=c.momentum or None),
}


def decays_weight(params) -> Any:
  """The weight-decay mask: True for kernels, False for biases, norm scales and codebooks."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def warmup_steps(config: ml_collections.ConfigDict, num_train_steps: int) -> int:
  if config.warmup_fraction > 0:
    return int(round(config.warmup_fraction * num_train_steps))
  return config.warmup_steps


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           num_train_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step (config.schedule), from optax's schedules."""
  peak, end = config.learning_rate, config.end_learning_rate
  warmup = warmup_steps(config, num_train_steps)
  ramp = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if config.schedule == 'constant':
    return optax.warmup_constant_schedule(0.0, peak, warmup) if warmup else (
        optax.constant_schedule(peak))
  if config.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, num_train_steps, end)
  if config.schedule == 'warmup_linear':
    decay = optax.linear_schedule(peak, end, max(num_train_steps - warmup, 1))
  else:  # warmup_rsqrt: peak / sqrt(1 + steps since the warm-up / its length).
    timescale = max(warmup, 1)
    decay = lambda count: peak * jax.lax.rsqrt(1.0 + count / timescale)
  return optax.join_schedules([ramp, decay], [warmup])


def create_optimizer(config: ml_collections.ConfigDict,
                     num_train_steps: int = 1) -> optax.GradientTransformation:
  """The optimizer of `config` for a run of `num_train_steps` (its schedule's length; the
  optimizer state's structure does not depend on it).

  With accumulate_steps = k > 1, optax.MultiSteps averages the gradients of k steps and
  updates once; the schedule stays a function of the train step (update u runs at the rate
  of step u * k), and the state holds the partial sum, so a checkpoint between the k resumes
  exactly.
  """
  k = config.accumulate_steps
  plain = config.schedule == 'constant' and not warmup_steps(config, num_train_steps)
  # A constant rate stays a number: the optimizer state of earlier runs, which restores.
  schedule = learning_rate_schedule(config, num_train_steps)
  learning_rate = config.learning_rate if plain else (
      schedule if k == 1 else lambda update: schedule(update * k))
  tx = OPTIMIZERS[config.optimizer](learning_rate, config)
  if config.grad_clip_norm > 0:  # Of the accumulated gradient, as of one large batch's.
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  if k > 1:
    tx = optax.MultiSteps(tx, k).gradient_transformation()
  return tx
