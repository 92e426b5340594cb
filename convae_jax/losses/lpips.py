"""`lpips`: the perceptual distance LPIPS between each image and its reconstruction.

    config.losses.lpips = {'weight': 1.0, 'network': 'alexnet'}

taming-transformers' VQGAN and latent diffusion's autoencoder add LPIPS-VGG16 at weight 1.0.
On 32x32 images VGG16 costs several times the residual backbone's whole step
(benchmarks/lpips_cost.py); AlexNet is the cheap one. Images are fed as they are
(perceptual.py says why).
"""
import dataclasses

from convae_jax import perceptual
from convae_jax.losses import term
from convae_jax.models import base


@term.TERMS.register('lpips')
@dataclasses.dataclass(frozen=True)
class LpipsTerm(term.LossTerm):
  network: str = 'alexnet'

  def __post_init__(self):
    base.require('losses.lpips', 'weight', self.weight,
                 isinstance(self.weight, (int, float)) and self.weight >= 0, 'be a number >= 0')
    base.require_one_of('losses.lpips', 'network', self.network, perceptual.NETWORKS)

  def check(self, model, image_channels: int) -> None:
    if not perceptual.measurable(image_channels):
      raise ValueError(f'losses.lpips: LPIPS measures images of 1 or 3 channels, not '
                       f'{image_channels}; remove the term for this dataset')

  def constants(self):
    return perceptual.weights(self.network)

  def __call__(self, inputs: term.TermInputs):
    distance = perceptual.lpips(inputs.constants, self.network, inputs.reconstruction,
                                inputs.images, inputs.value_range)
    return distance, {}
