"""`patchgan`: pix2pix's PatchGAN, as taming-transformers trains VQGAN with it.

    conv4x4/2(widths[0]) -> LeakyReLU(0.2)
    [conv4x4/2(w) -> norm -> LeakyReLU(0.2)] for w in widths[1:-1]
    conv4x4/1(widths[-1]) -> norm -> LeakyReLU(0.2) -> conv4x4/1(1)        (padding 1)

taming's NLayerDiscriminator is widths (64, 128, 256, 512) on 256x256 images (30x30 logits);
on 32x32 images (64, 128, 256) gives 6x6 logits. Where it differs: group norm by default
rather than batch norm, so a discriminator keeps no batch statistics across devices and
judges each image on its own.
"""
from typing import Sequence

import flax.linen as nn
import jax

from convae_jax.models import base
from convae_jax.models.backbones import resnet
from convae_jax.models.discriminators import DISCRIMINATORS

NORMALIZATIONS = ('group', 'none')
# taming's weights_init for its convolutions.
KERNEL_INIT = nn.initializers.normal(0.02)


@DISCRIMINATORS.register('patchgan')
class PatchGAN(nn.Module):
  widths: Sequence[int] = (64, 128, 256)
  normalization: str = 'group'

  def __post_init__(self):
    what = "losses.adversarial.discriminator 'patchgan'"
    base.check_widths(what, 'widths', self.widths)
    base.require(what, 'widths', self.widths, len(self.widths) >= 2,
                 'have two or more widths (the last at stride 1)')
    base.require_one_of(what, 'normalization', self.normalization, NORMALIZATIONS)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images
    for i, width in enumerate(self.widths):
      stride = 1 if i == len(self.widths) - 1 else 2
      normed = i > 0 and self.normalization == 'group'
      x = nn.Conv(width, (4, 4), strides=stride, padding=1, use_bias=not normed,
                  kernel_init=KERNEL_INIT, name=f'conv{i}')(x)
      if normed:
        x = nn.GroupNorm(resnet.num_groups(width), name=f'norm{i}')(x)
      x = nn.leaky_relu(x, 0.2)
    return nn.Conv(1, (4, 4), padding=1, kernel_init=KERNEL_INIT, name='logits')(x)
