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
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics


def to_unit_range(x: jax.Array, value_range: tuple[float, float]) -> jax.Array:
  low, high = value_range
  return (x - low) / (high - low)


def image_metrics(reconstruction: jax.Array, target: jax.Array,
                  value_range: tuple[float, float]) -> dict[str, jax.Array]:
  """Per-image mse, psnr and ssim on [0, 1] pixels; each of shape [batch]."""
  reconstruction = jnp.clip(to_unit_range(reconstruction, value_range), 0.0, 1.0)
  target = to_unit_range(target, value_range)
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
