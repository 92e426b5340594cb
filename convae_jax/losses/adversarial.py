"""`adversarial`: a discriminator's judgement of the reconstructions, as VQGAN trains with it.

    config.losses.adversarial = {'weight': 0.5, 'start_step': 2000, 'loss': 'hinge',
                                 'adaptive_weight': True,
                                 'discriminator': {'name': 'patchgan', ...}}

The autoencoder minimizes the generator loss of its reconstructions (hinge: -D(x^);
non_saturating: softplus(-D(x^))), averaged over the discriminator's patches; with
`adaptive_weight` the trainer scales it by VQGAN's adaptive weight (the ratio of the other
terms' gradient norm to its own at the decoder's last layer, clipped to [0, 1e4]) times
`weight`. The discriminator (models/discriminators) is trained in the same step, with its own
optimizer state, on the batch against the reconstructions, to minimize
hinge: (relu(1 - D(x)) + relu(1 + D(x^))) / 2, or non_saturating:
(softplus(-D(x)) + softplus(D(x^))) / 2. Both losses are zero before `start_step` (taming's
disc_start), so the autoencoder first learns to reconstruct.
"""
import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from convae_jax.losses import term
from convae_jax.models import base
from convae_jax.models.discriminators import DISCRIMINATORS

LOSSES = ('hinge', 'non_saturating')
WHAT = 'losses.adversarial'


@term.TERMS.register('adversarial')
@dataclasses.dataclass(frozen=True)
class AdversarialTerm(term.LossTerm):
  weight: float = 0.5
  start_step: int = 0
  loss: str = 'hinge'
  adaptive_weight: bool = True
  discriminator: Mapping[str, Any] = ml_collections.FrozenConfigDict({'name': 'patchgan'})

  def __post_init__(self):
    base.require(WHAT, 'weight', self.weight,
                 isinstance(self.weight, (int, float)) and self.weight >= 0, 'be a number >= 0')
    base.require(WHAT, 'start_step', self.start_step,
                 base.is_int(self.start_step) and self.start_step >= 0, 'be an integer >= 0')
    base.require_one_of(WHAT, 'loss', self.loss, LOSSES)
    base.require(WHAT, 'adaptive_weight', self.adaptive_weight,
                 isinstance(self.adaptive_weight, bool), 'be True or False')
    if (not isinstance(self.discriminator, (Mapping, ml_collections.ConfigDict)) or
        not self.discriminator.get('name')):
      raise ValueError(f'{WHAT}: no discriminator; set {WHAT}.discriminator.name to one of: '
                       f'{", ".join(DISCRIMINATORS.names())}')
    # Hashable, as a Flax module field would be.
    object.__setattr__(self, 'discriminator', ml_collections.FrozenConfigDict(self.discriminator))
    self.trained_network()  # Its settings are checked here, with the term's.

  @property
  def adaptive(self) -> bool:
    return self.adaptive_weight

  def check(self, model, image_channels: int) -> None:
    if not self.adaptive_weight:
      return
    try:
      model.output_layer  # pylint: disable=pointless-statement
    except NotImplementedError as e:
      raise ValueError(f'{WHAT}.adaptive_weight: {e}, at which the weight compares gradient '
                       f'norms; set {WHAT}.adaptive_weight=False') from None

  def trained_network(self):
    return DISCRIMINATORS.create(dict(self.discriminator))

  def _logits(self, params, images) -> jax.Array:
    """The discriminator's logits [N, h, w, 1]: one per patch."""
    return self.trained_network().apply({'params': params}, images)

  def _active(self, step) -> jax.Array:
    return (step >= self.start_step).astype(jnp.float32)

  def __call__(self, inputs: term.TermInputs):
    fake = self._logits(inputs.params, inputs.reconstruction)
    loss = -fake if self.loss == 'hinge' else jax.nn.softplus(-fake)
    return self._active(inputs.step) * jnp.mean(loss, axis=(1, 2, 3)), {}

  def network_loss(self, inputs: term.TermInputs):
    real = self._logits(inputs.params, inputs.images)
    fake = self._logits(inputs.params, inputs.reconstruction)
    if self.loss == 'hinge':
      loss = 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))
    else:
      loss = 0.5 * (jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake)))
    return self._active(inputs.step) * loss, {
        'discriminator_loss': loss, 'logits_real': jnp.mean(real),
        'logits_fake': jnp.mean(fake)}
