"""`vq`: vector quantization (van den Oord et al. 2017, "Neural Discrete Representation
Learning"), with the remedies for codebook collapse that later work made standard.

A 1x1 projection maps the encoder's features to `code_dim` channels (None: as many as the
features; a smaller code_dim gives low-dimensional codes, projected back for the decoder);
each position snaps to the nearest of `num_codes` codebook vectors, and gradients pass the
snap unchanged (straight-through). With `l2_normalize`, codes and inputs are unit vectors
(nearest = most cosine-similar). Loss terms: commitment = `commitment_cost` * |z - sg(q)|^2
and, for `codebook='learned'`, codebook = |sg(z) - q|^2; `codebook='ema'` instead moves each
code to the running mean of the vectors it is assigned (decay `ema_decay`).

Against dead codes (state in the 'vq' collection, checkpointed):
* `init_from_data`: the first training step's codebook is `num_codes` encoder outputs spread
  evenly over the global batch, not noise far from every input;
* `restart_dead_codes`: a code whose moving-average share of positions (decay
  `usage_decay`, quicker than the codebook's so that dead codes are found within an epoch)
  falls below `dead_code_threshold / num_codes` is moved onto one of the batch's encoder
  outputs that the codebook represents worst (largest quantization error), and its share
  reset to 1/num_codes.
Statistics, initialization and restarts use the whole global batch (reduced over
`axis_name`), so every device holds the same codebook: 4 devices give what 1 does.
With config.micro_batches > 1 each part proposes its own restart vectors, which the
trainer's part average blends.
Distances are computed in float32.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from convae_jax.models import base, layers, parts

CODEBOOKS = ('ema', 'learned')


def l2_normalized(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), 1e-12))


def nearest_codes(vectors: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Index of the nearest codebook row for each vector [n, d], and its squared distance."""
  vectors, codebook = vectors.astype(jnp.float32), codebook.astype(jnp.float32)
  distances = (jnp.sum(vectors**2, axis=1, keepdims=True) - 2.0 * vectors @ codebook.T +
               jnp.sum(codebook**2, axis=1)[None, :])
  codes = jnp.argmin(distances, axis=1)
  return codes, jnp.take_along_axis(distances, codes[:, None], axis=1)[:, 0]


def evenly_spread_rows(vectors: jax.Array, num: int) -> jax.Array:
  """`num` rows of `vectors`, evenly spread over them (repeating if there are fewer)."""
  return vectors[jnp.linspace(0, vectors.shape[0] - 1, num).astype(jnp.int32)]


@parts.BOTTLENECKS.register('vq')
class VectorQuantizer(parts.Bottleneck):
  num_codes: int = 512
  code_dim: int | None = None
  codebook: str = 'ema'
  ema_decay: float = 0.99
  commitment_cost: float = 0.25
  l2_normalize: bool = False
  init_from_data: bool = True
  restart_dead_codes: bool = True
  dead_code_threshold: float = 0.1
  usage_decay: float = 0.9
  # The mapped axis of the data-parallel devices (set by the train step, as for Flax's
  # BatchNorm): codebook statistics are of the global batch. None: one device.
  axis_name: str | None = None

  def __post_init__(self):
    what = "model.bottleneck 'vq'"
    base.require(what, 'num_codes', self.num_codes,
                 base.is_int(self.num_codes) and self.num_codes >= 2, 'be an integer >= 2')
    base.require(what, 'code_dim', self.code_dim, self.code_dim is None or (
        base.is_int(self.code_dim) and self.code_dim >= 1),
                 "be an integer >= 1, or None for the encoder's channels")
    base.require_one_of(what, 'codebook', self.codebook, CODEBOOKS)
    for field in ('ema_decay', 'usage_decay'):
      value = getattr(self, field)
      base.require(what, field, value, 0.0 < value < 1.0, 'lie in (0, 1)')
    base.require(what, 'commitment_cost', self.commitment_cost, self.commitment_cost >= 0,
                 'be >= 0')
    base.require(what, 'dead_code_threshold', self.dead_code_threshold,
                 0.0 <= self.dead_code_threshold < 1.0,
                 'lie in [0, 1): a fraction of the uniform share 1/num_codes')
    super().__post_init__()

  @nn.compact
  def __call__(self, features, train, image_dims):
    del image_dims
    channels = features.shape[-1]
    dim = self.code_dim or channels
    z = layers.projection(dim, name='to_code')(features)
    flat = z.reshape(-1, dim).astype(jnp.float32)
    if self.l2_normalize:
      flat = l2_normalized(flat)
    codebook_variables = self._codebook_variables(dim)
    codebook = self._codebook(codebook_variables)
    updating = train and not self.is_initializing()
    if updating and self.init_from_data:
      data_codebook = self._normalized(evenly_spread_rows(
          jax.lax.stop_gradient(layers.device_concat(flat, self.axis_name)), self.num_codes))
      codebook = jnp.where(codebook_variables['initialized'].value > 0, codebook,
                           data_codebook)
    codes, errors = nearest_codes(jax.lax.stop_gradient(flat), codebook)
    quantized = codebook[codes]
    if updating:
      self._update_state(codebook_variables, codebook, flat, codes, errors)

    per_example = lambda x: jnp.mean(x.reshape(features.shape[0], -1), axis=1)
    losses = {'commitment': self.commitment_cost *
                            per_example(jnp.square(flat - jax.lax.stop_gradient(quantized)))}
    if self.codebook == 'learned':
      losses['codebook'] = per_example(jnp.square(jax.lax.stop_gradient(flat) - quantized))
    straight_through = flat + jax.lax.stop_gradient(quantized - flat)
    latents = straight_through.reshape(z.shape)
    if dim != channels:
      latents = layers.projection(channels, name='from_code')(latents)
    codes = codes.reshape(z.shape[:-1])
    positions = math.prod(codes.shape[1:])
    return parts.BottleneckOutput(
        latents=latents, losses=losses, codes=codes,
        # A deterministic code under a uniform prior: log(num_codes) nats a position.
        rate=jnp.full(codes.shape[:1], positions * math.log(self.num_codes)))

  def code_latents(self, codes):
    """The codebook vectors of `codes` [N, h, w], projected back to the encoder's channels
    where code_dim differs; read from the variables __call__ made."""
    params = self.variables['params']
    vectors = self._codebook_of({**params, **self.variables['vq']})[codes]
    if 'from_code' in params:
      vectors = vectors @ params['from_code']['kernel'] + params['from_code']['bias']
    return vectors

  def _codebook_variables(self, dim: int) -> dict:
    k = self.num_codes
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
    variables = {
        # Each code's moving-average share of positions (sums to 1), for finding dead codes.
        'usage': self.variable('vq', 'usage', lambda: jnp.full((k,), 1.0 / k, jnp.float32)),
        # 0 until the first training step (then the codebook came from data if asked).
        'initialized': self.variable('vq', 'initialized', jnp.zeros, (), jnp.float32),
    }
    if self.codebook == 'ema':
      # Moving averages of each code's share and of the sum of its assigned vectors over the
      # positions (shares, so a mean over devices or micro-batches of equal size is the
      # global batch's); the code is their ratio.
      variables['cluster_size'] = self.variable('vq', 'cluster_size',
                                                lambda: jnp.full((k,), 1.0 / k, jnp.float32))
      variables['embed_sum'] = self.variable(
          'vq', 'embed_sum', lambda: init(self.make_rng('params'), (k, dim)) / k)
    else:
      variables['codebook'] = self.param('codebook', init, (k, dim))
      # What initialization and restarts moved each learned code by (params only change by
      # the optimizer).
      variables['offset'] = self.variable('vq', 'offset', jnp.zeros, (k, dim), jnp.float32)
    return variables

  def _normalized(self, codebook: jax.Array) -> jax.Array:
    return l2_normalized(codebook) if self.l2_normalize else codebook

  def _codebook(self, variables: dict) -> jax.Array:
    return self._codebook_of({name: getattr(v, 'value', v) for name, v in variables.items()})

  def _codebook_of(self, values: dict) -> jax.Array:
    """The codebook in use, from the arrays it is stored as (by variable name)."""
    if self.codebook == 'ema':
      raw = values['embed_sum'] / jnp.maximum(values['cluster_size'], 1e-12)[:, None]
    else:
      raw = values['codebook'] + values['offset']
    return self._normalized(raw)

  def _update_state(self, variables, codebook, flat, codes, errors) -> None:
    """Moving averages, then restarts of dead codes, from the global batch."""
    k = self.num_codes
    one_hot = jax.nn.one_hot(codes, k, dtype=jnp.float32)
    share = layers.device_mean(jnp.mean(one_hot, axis=0), self.axis_name)
    was_initialized = variables['initialized'].value > 0
    usage = jnp.where(was_initialized, variables['usage'].value, 1.0 / k)
    usage = self.usage_decay * usage + (1.0 - self.usage_decay) * share
    if self.codebook == 'ema':
      decay = self.ema_decay
      assigned = layers.device_mean(one_hot.T @ jax.lax.stop_gradient(flat),
                                    self.axis_name) / flat.shape[0]
      cluster_size = jnp.where(was_initialized, variables['cluster_size'].value, 1.0 / k)
      cluster_size = decay * cluster_size + (1.0 - decay) * share
      embed_sum = jnp.where(was_initialized, variables['embed_sum'].value, codebook / k)
      embed_sum = decay * embed_sum + (1.0 - decay) * assigned
    new_codebook = codebook
    if self.restart_dead_codes:
      dead = was_initialized & (usage < self.dead_code_threshold / k)
      # The global batch's worst-represented vectors, worst first, one per dead code.
      all_flat = jax.lax.stop_gradient(layers.device_concat(flat, self.axis_name))
      all_errors = layers.device_concat(errors, self.axis_name)
      worst = jax.lax.top_k(all_errors, min(k, all_errors.shape[0]))[1]
      rank = jnp.clip(jnp.cumsum(dead) - 1, 0, worst.shape[0] - 1)
      candidates = self._normalized(all_flat[worst[rank]])
      new_codebook = jnp.where(dead[:, None], candidates, codebook)
      usage = jnp.where(dead, 1.0 / k, usage)
      if self.codebook == 'ema':
        cluster_size = jnp.where(dead, 1.0 / k, cluster_size)
        embed_sum = jnp.where(dead[:, None], candidates / k, embed_sum)
    variables['usage'].value = usage
    variables['initialized'].value = jnp.ones_like(variables['initialized'].value)
    if self.codebook == 'ema':
      variables['cluster_size'].value = cluster_size
      variables['embed_sum'].value = embed_sum
    else:
      params = jax.lax.stop_gradient(variables['codebook'])
      variables['offset'].value = new_codebook - params
