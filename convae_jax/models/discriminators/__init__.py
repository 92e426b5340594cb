"""Discriminators for an adversarial loss term (losses/adversarial.py), by name:

    config.losses.adversarial.discriminator = {'name': 'patchgan', 'widths': (64, 128, 256)}

A discriminator is a Flax module registered in DISCRIMINATORS whose dataclass fields are its
settings; called on images [N, H, W, C] (in the model's input range) it gives real-vs-fake
logits [N, h, w, 1], one per patch. A new one is a new file that registers itself.
"""
from convae_jax.models import registry

DISCRIMINATORS = registry.Registry('losses.adversarial.discriminator')

# pylint: disable-next=wrong-import-position,unused-import  (registers 'patchgan')
from convae_jax.models.discriminators import patchgan
