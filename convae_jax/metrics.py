"""Image-quality metrics and the clu metric collections the trainer aggregates.

All image metrics are computed per image on [0, 1] pixels (the model's range is mapped there
first), so evaluation can mask padding and average over images:
  mse   mean over pixels and channels of the squared error;
  psnr  10 * log10(1 / mse) of each image (peak value 1);
  ssim  SSIM of each image (11x11 Gaussian window, sigma 1.5, k1=0.01, k2=0.03, per-channel,
        averaged over positions and channels), as in Wang et al. (2004), via dm_pix.
"""
from typing import Iterable

import dm_pix
import flax.struct
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from convae_jax import pixels


def image_metrics(reconstruction: jax.Array, target: jax.Array,
                  value_range: tuple[float, float]) -> dict[str, jax.Array]:
  """Per-image mse, psnr and ssim on [0, 1] pixels; each of shape [batch]."""
  reconstruction = jnp.clip(pixels.to_unit_range(reconstruction, value_range), 0.0, 1.0)
  target = pixels.to_unit_range(target, value_range)
  mse = jnp.mean(jnp.square(reconstruction - target), axis=(1, 2, 3))
  return {
      'mse': mse,
      # Floor the MSE so a perfect image gives a large finite PSNR instead of inf.
      'psnr': -10.0 * jnp.log10(jnp.maximum(mse, 1e-10)),
      'ssim': dm_pix.ssim(reconstruction, target, max_val=1.0),
  }


def averages_collection(names: Iterable[str]) -> type[clu_metrics.Collection]:
  """A clu Collection averaging each named output (masked by a `mask` output when given)."""
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in sorted(set(names))})


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

  @classmethod
  def empty(cls) -> 'Min':
    return cls(value=jnp.array(jnp.inf, jnp.float32))

  @classmethod
  def from_model_output(cls, values: jax.Array, **_) -> 'Min':
    return cls(value=jnp.min(values).astype(jnp.float32))

  def merge(self, other: 'Min') -> 'Min':
    return type(self)(value=jnp.minimum(self.value, other.value))

  def compute(self) -> jax.Array:
    return self.value


def train_collection(model_names: Iterable[str]) -> type[clu_metrics.Collection]:
  """Train metrics: averages of loss, norms and the model's terms; non-finite step flags.

  `non_finite_loss` and `non_finite_grads` are the fractions of steps where they were
  NaN/Inf (never masked), `first_non_finite_step` the first such step.
  """
  averaged = ['loss', 'grad_norm', 'param_norm'] + list(model_names)
  flags = {name: UnmaskedAverage.from_output(name)
           for name in ('non_finite_loss', 'non_finite_grads')}
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in sorted(set(averaged))},
      **flags, first_non_finite_step=Min.from_output('first_non_finite_step'))
