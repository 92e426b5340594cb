"""`autoencoder`: the model of parts, each picked by name from its registry (models.parts).

    corruption -> backbone encoder -> bottleneck -> backbone decoder -> likelihood

    config.model = {'name': 'autoencoder', 'image_channels': 3,
                    'backbone': {'name': 'seed', 'features': (16, 32)},
                    'bottleneck': {'name': 'identity'},
                    'likelihood': {'name': 'mse'},
                    'corruption': {'name': 'none'}}

Loss terms: the likelihood's against the clean images (`mse`, or `nll` per dimension) and
the bottleneck's (`kl`, `commitment`, ...). Metrics: with a proper likelihood, `nll_bpd` (the
reconstruction's -log p(x | z) in bits per dimension) and, when the bottleneck has a prior,
`nelbo` (nats per image) and `bpd`, the negative ELBO in bits per dimension.
Evaluation shows the decoded deterministic latent (the posterior mean, the quantized code);
the ELBO metrics use the sampled one, as in training.
"""
import math
from typing import Any, Mapping

import jax.numpy as jnp
import ml_collections

from convae_jax.models import base, layers, parts, registry

PART_KINDS = {'backbone': parts.BACKBONES, 'bottleneck': parts.BOTTLENECKS,
              'likelihood': parts.LIKELIHOODS, 'corruption': parts.CORRUPTIONS}


def _frozen(kind: str, config: Any) -> ml_collections.FrozenConfigDict:
  """A part's config as a FrozenConfigDict: hashable (Flax hashes module fields)."""
  if not isinstance(config, (Mapping, ml_collections.ConfigDict)):
    raise ValueError(f"model.{kind}={config!r}: set it to the part's config, e.g. "
                     f"{{'name': '{PART_KINDS[kind].names()[0]}'}}")
  return ml_collections.FrozenConfigDict(config)


@registry.register('autoencoder')
class PartsAutoencoder(base.Autoencoder):
  """An autoencoder made of the parts its config names (see the module docstring)."""
  backbone: Mapping[str, Any] = ml_collections.FrozenConfigDict({'name': 'seed'})
  bottleneck: Mapping[str, Any] = ml_collections.FrozenConfigDict({'name': 'identity'})
  likelihood: Mapping[str, Any] = ml_collections.FrozenConfigDict({'name': 'mse'})
  corruption: Mapping[str, Any] = ml_collections.FrozenConfigDict({'name': 'none'})
  image_channels: int = 3
  # The backbone's precision (config.dtype): its parameters stay float32, and the bottleneck
  # and likelihood compute in float32 on its outputs (vector quantization in bfloat16 is known
  # to lose codes).
  dtype: str = 'float32'
  # The mapped axis of the data-parallel devices, handed to the bottleneck (set by the train
  # step, as for Flax's BatchNorm; None: one device).
  axis_name: str | None = None

  def __post_init__(self):
    built = {}
    for kind, parts_registry in PART_KINDS.items():
      config = _frozen(kind, getattr(self, kind))
      object.__setattr__(self, kind, config)
      built[kind] = parts_registry.create(config.as_configdict())  # Its errors name the part.
    base.require('model', 'image_channels', self.image_channels,
                 base.is_int(self.image_channels) and self.image_channels >= 1,
                 'be an integer >= 1')
    base.require_one_of('model', 'dtype', self.dtype, ('float32', 'bfloat16'))
    if not built['bottleneck'].deterministic and self.corruption['name'] != 'none':
      raise ValueError(
          f"model.corruption.name={self.corruption['name']!r} (denoising) needs a deterministic "
          f"bottleneck, but model.bottleneck.name={self.bottleneck['name']!r} draws random "
          'latents; use one of: ' + ', '.join(
              n for n in parts.BOTTLENECKS.names() if parts.BOTTLENECKS.get(n).deterministic))
    # Built here rather than only in setup so the properties below work on an unbound model.
    object.__setattr__(self, '_parts', built)
    super().__post_init__()

  @property
  def label(self) -> str:
    """backbone+bottleneck+likelihood(+corruption): what the model is, in one word."""
    names = [self.backbone['name'], self.bottleneck['name'], self.likelihood['name']]
    if self.corruption['name'] != 'none':
      names.append(self.corruption['name'] + '-corrupted')
    return '+'.join(names)

  @property
  def output_range(self) -> tuple[float, float]:
    return self._parts['likelihood'].output_range

  @property
  def exact_input_range(self):
    return self._parts['likelihood'].exact_input_range

  @property
  def num_downsamplings(self) -> int:
    return self._parts['backbone'].num_downsamplings

  @property
  def output_layer(self) -> tuple[str, ...]:
    return ('decoder', self._parts['backbone'].decoder_output_layer, 'kernel')

  @property
  def rng_streams(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(self._parts['bottleneck'].rng_streams +
                               self._parts['corruption'].rng_streams))

  @property
  def deterministic(self) -> bool:
    return self._parts['bottleneck'].deterministic

  @property
  def can_sample(self) -> bool:
    return self._parts['bottleneck'].can_sample

  @property
  def samples_at_training_size(self) -> bool:
    return self._parts['bottleneck'].samples_at_training_size

  @property
  def num_codes(self) -> int:
    return self._parts['bottleneck'].num_codes

  @property
  def has_importance_weights(self) -> bool:
    return self._parts['bottleneck'].can_sample and self._parts['likelihood'].proper

  def setup(self):
    backbone, likelihood = self._parts['backbone'], self._parts['likelihood']
    initializing = self.is_initializing()
    self.encoder = layers.computing_in(backbone.encoder(), self.dtype, initializing)
    self.decoder = layers.computing_in(
        backbone.decoder(likelihood.decoder_channels(self.image_channels)), self.dtype,
        initializing)
    # The attribute names are the checkpoints' parameter names (bottleneck_part, ...).
    bottleneck = self._parts['bottleneck']
    self.bottleneck_part = (bottleneck.clone(axis_name=self.axis_name)
                            if hasattr(bottleneck, 'axis_name') else bottleneck.clone())
    self.likelihood_part = likelihood.clone()
    self.corruption_part = self._parts['corruption'].clone()

  def features(self, images, train):
    """The encoder's features of `images`, computed in `dtype`, given as float32."""
    return self.encoder(images.astype(self.dtype), train).astype(jnp.float32)

  def decoder_outputs(self, latents, train):
    """The decoder's outputs (before the likelihood), computed in `dtype`, given as float32."""
    return self.decoder(latents.astype(self.dtype), train).astype(jnp.float32)

  def encode(self, images, train):
    return self.bottleneck_part.latents(self.features(images, train))

  def decode(self, latents, train):
    return self.likelihood_part.mean(self.decoder_outputs(latents, train))

  def corrupt(self, images):
    return self.corruption_part(images, self.output_range)

  def __call__(self, images, *, train=False):
    image_dims = math.prod(images.shape[1:])
    features = self.features(self.corrupt(images), train)
    bottleneck = self.bottleneck_part(features, train, image_dims)
    outputs = self.decoder_outputs(bottleneck.latents, train)
    losses, nll = self.likelihood_part(outputs, images)
    reconstruction = self.likelihood_part.mean(outputs)
    if not train and not self.deterministic:
      reconstruction = self.decode(self.bottleneck_part.latents(features), train)
    metrics = dict(bottleneck.metrics)
    if nll is not None:
      bits = image_dims * math.log(2.0)
      metrics['nll_bpd'] = nll / bits
      if bottleneck.rate is not None:
        metrics.update(nelbo=nll + bottleneck.rate, bpd=(nll + bottleneck.rate) / bits)
    return base.AutoencoderOutput(reconstruction=reconstruction,
                                  losses={**losses, **bottleneck.losses}, metrics=metrics,
                                  codes=bottleneck.codes)

  def codes(self, images):
    return self.bottleneck_part(self.features(images, False), False, 1).codes

  def decode_codes(self, codes):
    return self.decode(self.bottleneck_part.code_latents(codes), False)

  def log_importance_weight(self, images):
    z, log_ratio = self.bottleneck_part.posterior_sample(self.features(images, False))
    _, nll = self.likelihood_part(self.decoder_outputs(z, False), images)
    return -nll - log_ratio

  def sample(self, num, height, width):
    """Decoded means of latents drawn from the bottleneck's prior."""
    factor = 2**self.num_downsamplings
    return self.decode(self.bottleneck_part.sample_prior(num, height // factor, width // factor),
                       False)

  def interpolate(self, start, end, steps=8):
    """Decoded means along the line between the latents of `start` and `end` [N, ...]."""
    z0, z1 = self.encode(start, False), self.encode(end, False)
    t = jnp.linspace(0.0, 1.0, steps).reshape(1, steps, 1, 1, 1)
    path = (1.0 - t) * z0[:, None] + t * z1[:, None]
    return self.decode(path.reshape((-1,) + z0.shape[1:]), False)

  def pictures(self, images):
    extra = {}
    if self.can_sample:
      n, h, w, _ = images.shape
      pairs = max(1, min(4, n // 2))
      extra['prior_samples'] = self.sample(n, h, w)
      extra['interpolation'] = self.interpolate(images[:pairs], images[pairs:2 * pairs])
    if self.corruption['name'] != 'none':
      low, high = self.output_range
      corrupted = self.corrupt(images)
      denoised = self.decode(self.encode(corrupted, False), False)
      extra['corrupted_and_denoised'] = (jnp.concatenate([corrupted, denoised], axis=1) - low) / (
          high - low)
    return extra

