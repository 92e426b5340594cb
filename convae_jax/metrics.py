"""Image-quality metrics and the clu metric collections the trainer aggregates.

All image metrics are computed per image on [0, 1] pixels (the model's range is mapped there
first), so evaluation can mask padding and average over images:
  mse   mean over pixels and channels of the squared error;
  psnr  10 * log10(1 / mse) of each image (peak value 1);
  ssim  SSIM of each image (11x11 Gaussian window, sigma 1.5, k1=0.01, k2=0.03, per-channel,
        averaged over positions and channels), as in Wang et al. (2004), via dm_pix;
  lpips LPIPS-AlexNet of each image (perceptual.py), given its weights: lower is closer.
For a model with discrete codes, `CodeCounts` counts each code's use over a whole split (each
eval image once), from which `code_statistics` gives codes_used (the fraction of codes used
at least once) and code_perplexity (exp of the entropy of the usage histogram).
"""
import functools
from typing import Callable, ClassVar, Iterable

import dm_pix
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from convae_jax import perceptual, pixels


def image_metrics(reconstruction: jax.Array, target: jax.Array, value_range: tuple[float, float],
                  lpips_params: dict | None = None) -> dict[str, jax.Array]:
  """Per-image mse, psnr and ssim on [0, 1] pixels, and lpips given `lpips_params`
  (perceptual.weights(perceptual.EVAL_NETWORK)); each of shape [batch]."""
  reconstruction = jnp.clip(pixels.to_unit_range(reconstruction, value_range), 0.0, 1.0)
  target = pixels.to_unit_range(target, value_range)
  mse = jnp.mean(jnp.square(reconstruction - target), axis=(1, 2, 3))
  values = {
      'mse': mse,
      # Floor the MSE so a perfect image gives a large finite PSNR instead of inf.
      'psnr': -10.0 * jnp.log10(jnp.maximum(mse, 1e-10)),
      'ssim': dm_pix.ssim(reconstruction, target, max_val=1.0),
  }
  if lpips_params:
    values['lpips'] = perceptual.lpips(lpips_params, perceptual.EVAL_NETWORK, reconstruction,
                                       target, (0.0, 1.0))
  return values


@flax.struct.dataclass
class UnmaskedAverage(clu_metrics.Average):
  """An average over every step, including those a `mask` drops from the other metrics."""

  @classmethod
  def from_model_output(cls, values: jax.Array, mask: jax.Array | None = None, **_):
    del mask
    return super().from_model_output(values)


@flax.struct.dataclass
class Min(clu_metrics.Metric):
  """The smallest value seen (over devices and steps); `inf` when nothing was seen."""
  value: jax.Array
  # What Max changes: the value of nothing seen, and how values combine.
  nothing: ClassVar[float] = jnp.inf
  of_values: ClassVar[Callable] = staticmethod(jnp.min)
  combine: ClassVar[Callable] = staticmethod(jnp.minimum)

  @classmethod
  def empty(cls):
    return cls(value=jnp.array(cls.nothing, jnp.float32))

  @classmethod
  def from_model_output(cls, values: jax.Array, **_):
    return cls(value=cls.of_values(values).astype(jnp.float32))

  def merge(self, other):
    return type(self)(value=self.combine(self.value, other.value))

  def compute(self) -> jax.Array:
    return self.value


@flax.struct.dataclass
class Max(Min):
  """The largest value seen (over devices and steps); `-inf` when nothing was seen."""
  nothing: ClassVar[float] = -jnp.inf
  of_values: ClassVar[Callable] = staticmethod(jnp.max)
  combine: ClassVar[Callable] = staticmethod(jnp.maximum)


@flax.struct.dataclass
class UnmaskedSum(clu_metrics.Metric):
  """The sum over steps of a per-step value (the same on every device), mask or not."""
  total: jax.Array

  @classmethod
  def empty(cls) -> 'UnmaskedSum':
    return cls(total=jnp.array(0.0, jnp.float32))

  @classmethod
  def from_model_output(cls, values: jax.Array, **_) -> 'UnmaskedSum':
    return cls(total=jnp.mean(values).astype(jnp.float32))

  def merge(self, other: 'UnmaskedSum') -> 'UnmaskedSum':
    return type(self)(total=self.total + other.total)

  def _reduce_merge(self, other: 'UnmaskedSum') -> 'UnmaskedSum':
    # Across devices each holds the same step's value: one step, not one per device.
    return type(self)(total=jnp.maximum(self.total, other.total))

  def compute(self) -> jax.Array:
    return self.total


def train_collection(model_names: Iterable[str]) -> type[clu_metrics.Collection]:
  """Train metrics: averages of loss, norms and the model's terms; non-finite step flags.

  `non_finite_loss` and `non_finite_grads` are the fractions of steps where they were
  NaN/Inf (never masked), `first_non_finite_step` the first such step; `skipped_steps` counts
  the steps whose update was dropped, `last_kept_step` is the last one applied.
  The same names give the same class: totals made apart (e.g. `empty()`) then have the
  pytree type of a compiled step's own, and pass into it without a new trace.
  """
  return _train_collection(tuple(model_names))


@functools.cache
def _train_collection(model_names: tuple[str, ...]) -> type[clu_metrics.Collection]:
  averaged = ['loss', 'grad_norm', 'param_norm', 'learning_rate'] + list(model_names)
  flags = {name: UnmaskedAverage.from_output(name)
           for name in ('non_finite_loss', 'non_finite_grads')}
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in sorted(set(averaged))},
      **flags, first_non_finite_step=Min.from_output('first_non_finite_step'),
      skipped_steps=UnmaskedSum.from_output('skipped_steps'),
      last_kept_step=Max.from_output('last_kept_step'))


def code_counts(codes: jax.Array, num_codes: int, mask: jax.Array | None = None) -> jax.Array:
  """How often each code appears in `codes` [batch, ...] (examples where `mask` is 0 not)."""
  weights = jnp.ones(codes.shape[:1]) if mask is None else mask.astype(jnp.float32)
  weights = jnp.broadcast_to(weights.reshape((-1,) + (1,) * (codes.ndim - 1)), codes.shape)
  return jnp.zeros((num_codes,), jnp.float32).at[codes.ravel()].add(weights.ravel())


def code_statistics(counts) -> dict[str, jax.Array]:
  """codes_used and code_perplexity of a usage histogram (jax or numpy)."""
  xp = np if isinstance(counts, np.ndarray) else jnp
  share = counts / xp.maximum(counts.sum(), 1.0)
  entropy = -xp.sum(xp.where(share > 0, share * xp.log(xp.maximum(share, 1e-30)), 0.0))
  return {'codes_used': xp.mean(counts > 0), 'code_perplexity': xp.exp(entropy)}


def code_counts_metric(num_codes: int) -> type[clu_metrics.Metric]:
  """A clu metric summing the use of each of `num_codes` codes (from the `codes` output,
  masked by `mask`) over devices and batches; compute() gives the counts [num_codes]."""

  @flax.struct.dataclass
  class CodeCounts(clu_metrics.Metric):
    counts: jax.Array

    @classmethod
    def empty(cls) -> 'CodeCounts':
      return cls(counts=jnp.zeros((num_codes,), jnp.float32))

    @classmethod
    def from_model_output(cls, codes: jax.Array, mask: jax.Array | None = None,
                          **_) -> 'CodeCounts':
      return cls(counts=code_counts(codes, num_codes, mask))

    def merge(self, other: 'CodeCounts') -> 'CodeCounts':
      return type(self)(counts=self.counts + other.counts)

    def compute(self) -> jax.Array:
      return self.counts

  return CodeCounts


def eval_collection(names: Iterable[str], num_codes: int) -> type[clu_metrics.Collection]:
  """Averages of `names`, and the split's code counts (`code_counts`) for a model with codes."""
  averaged = {name: clu_metrics.Average.from_output(name) for name in sorted(set(names))}
  if num_codes:
    averaged['code_counts'] = code_counts_metric(num_codes)
  return clu_metrics.Collection.create(**averaged)
