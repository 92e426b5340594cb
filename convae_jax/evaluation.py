"""Evaluation over a whole split: the metric totals of the pmapped eval step (steps.py), and
the importance-weighted bound of a model with a prior."""
import functools
from typing import Iterable

import flax.jax_utils
import jax
import numpy as np

from convae_jax import metrics, pixels, steps
from convae_jax.cpu import kernels as cpu_kernels


# Replicated metric totals merged with an update in one dispatch (an eager merge is many small
# ops); the totals passed in are consumed.
merge_metrics = jax.pmap(lambda totals, update: totals.merge(update), donate_argnums=(0,))


def evaluate(p_eval_step, state: steps.TrainState, batches: Iterable[tuple[np.ndarray, np.ndarray]],
             devices, base_rng: jax.Array) -> tuple[dict[str, float], np.ndarray | None]:
  """Metrics of the replicated `state` over `batches` of (images, mask) [devices, batch, ...]
  (input_pipeline.eval_batches: a whole split, each image once), and for a model with codes
  each code's use over them (with codes_used and code_perplexity among the metrics)."""
  totals = None
  for i, (images, mask) in enumerate(flax.jax_utils.prefetch_to_device(batches, 2, devices)):
    # Each batch its own key: a model's noise or posterior sample does not repeat per batch.
    update = p_eval_step(state, images, mask, jax.random.fold_in(base_rng, i))
    totals = update if totals is None else merge_metrics(totals, update)
  results = jax.device_get(flax.jax_utils.unreplicate(totals).compute())
  counts = results.pop('code_counts', None)
  scalars = {k: float(v) for k, v in results.items()}
  if counts is not None:
    scalars.update({k: float(v) for k, v in metrics.code_statistics(np.asarray(counts)).items()})
  return scalars, counts


def log_importance_weight_step(state: steps.TrainState, images: jax.Array, base_rng: jax.Array, *,
                               model, value_range: tuple[float, float]) -> jax.Array:
  """The model's log importance weight of each uint8 image at one posterior draw [batch]."""
  return model.apply({'params': state.params, **state.model_state},
                     pixels.model_input(images, value_range),
                     rngs=steps.step_rngs(model, base_rng, state.step),
                     method=lambda m, x: m.log_importance_weight(x))


def importance_weighted_bpd(model, state: steps.TrainState,
                            batches: Iterable[tuple[np.ndarray, np.ndarray]], devices,
                            base_rng: jax.Array, value_range: tuple[float, float],
                            num_samples: int, kernels: str = 'auto') -> float:
  """Bits per dimension of the importance-weighted bound with `num_samples` posterior draws
  per image (IWAE, Burda et al. 2016: -log of the mean of the weights, a bound on -log p(x)
  at least as tight as the negative ELBO, and tighter as draws grow), averaged over `batches`
  (each image once, as `evaluate`) of one process. `kernels`: config.kernels of the run."""
  step = functools.partial(log_importance_weight_step, model=model, value_range=value_range)
  p_step = jax.pmap(cpu_kernels.tracing_with(kernels, step), axis_name=steps.AXIS,
                    in_axes=(0, 0, None))
  total, count, dims = 0.0, 0, None
  for i, (images, mask) in enumerate(batches):
    dims = int(np.prod(images.shape[2:]))
    batch_rng = jax.random.fold_in(base_rng, i)
    # [draws, devices, batch], in float64 for the log-mean-exp.
    log_weights = np.stack([np.asarray(p_step(state, images, jax.random.fold_in(batch_rng, s)),
                                       np.float64) for s in range(num_samples)])
    bound = np.logaddexp.reduce(log_weights, axis=0) - np.log(num_samples)
    total -= float(bound[mask].sum())
    count += int(mask.sum())
  return total / count / (dims * np.log(2.0))
