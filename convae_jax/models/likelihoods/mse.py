"""`mse`: the seed's loss, the mean squared error of Sigmoid outputs against the images."""
import flax.linen as nn

from convae_jax.models import base, parts


@parts.LIKELIHOODS.register('mse')
class MeanSquaredError(parts.Likelihood):
  """Not a normalized distribution over 8-bit pixels: no bits/dim."""

  def mean(self, outputs):
    return nn.sigmoid(outputs)

  def __call__(self, outputs, images):
    return {'mse': base.per_example_mse(self.mean(outputs), images)}, None
