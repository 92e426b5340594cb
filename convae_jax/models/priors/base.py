"""The contract of a prior over codes, its registry and ancestral sampling.

A prior is a Flax linen module subclassing `CodePrior`, registered in PRIORS. Its fields
`num_codes` and `grid` are filled in from the first stage (its code book's size and code grid
[h, w]); the rest are its settings. It defines `logits(codes, train)`: for code grids
[N, h, w], the logits [N, h, w, num_codes] of each position's code given the codes before it
in raster order (row by row, left to right) and nothing else. Calling it gives a
`PriorOutput` with the loss the train step (steps.py) minimizes: the negative log-likelihood
in nats per code. `sample` draws code grids position by position from any such prior.
"""
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from convae_jax.models import base, registry

PRIORS = registry.Registry('model')
# The fields a prior takes from its first stage (num_codes, grid) and from config.dtype,
# never from config.model.
FILLED_IN = ('num_codes', 'grid', 'dtype')


@flax.struct.dataclass
class PriorOutput:
  logits: jax.Array  # [N, h, w, num_codes], float32.
  losses: dict[str, jax.Array]  # 'nll': nats per code, per example [N].
  metrics: dict[str, jax.Array] = flax.struct.field(default_factory=dict)


class CodePrior(nn.Module):
  """Base class: a distribution over code grids, factored in raster order."""
  num_codes: int = 512
  grid: tuple[int, int] = (8, 8)
  # The activations' precision (config.dtype); parameters and logits stay float32.
  dtype: str = 'float32'

  def __post_init__(self):
    what = f'model {type(self).__name__}'
    base.require(what, 'num_codes', self.num_codes,
                 base.is_int(self.num_codes) and self.num_codes >= 2, 'be an integer >= 2')
    base.require(what, 'grid', self.grid, len(tuple(self.grid)) == 2 and all(
        base.is_int(s) and s >= 1 for s in self.grid), 'be two positive integers (h, w)')
    base.require_one_of('model', 'dtype', self.dtype, ('float32', 'bfloat16'))
    super().__post_init__()

  def require_sizes(self, what: str, fields: tuple[str, ...]) -> None:
    """A subclass's checks: each of `fields` an integer >= 1, and `dropout` in [0, 1)."""
    for field in fields:
      value = getattr(self, field)
      base.require(what, field, value, base.is_int(value) and value >= 1, 'be an integer >= 1')
    base.require(what, 'dropout', self.dropout, 0.0 <= self.dropout < 1.0, 'lie in [0, 1)')

  @property
  def rng_streams(self) -> tuple[str, ...]:
    """The PRNG streams it draws from in training (the trainer passes a key for each)."""
    return ('dropout',) if getattr(self, 'dropout', 0.0) > 0 else ()

  def logits(self, codes: jax.Array, train: bool) -> jax.Array:
    raise NotImplementedError

  def __call__(self, codes: jax.Array, *, train: bool = False) -> PriorOutput:
    # Integer codes; the trainer builds the state from zeros of the grid's shape.
    codes = codes.astype(jnp.int32)
    logits = self.logits(codes, train).astype(jnp.float32)
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), codes[..., None], axis=-1)[..., 0]
    nll = -jnp.mean(log_p.reshape(codes.shape[0], -1), axis=1)
    return PriorOutput(logits=logits, losses={'nll': nll},
                       metrics={'bits_per_code': nll / math.log(2.0)})


def create_prior(model_config: ml_collections.ConfigDict, num_codes: int,
                 grid: tuple[int, int], dtype: str = 'float32') -> CodePrior:
  """The prior `model_config.name` names, over `num_codes` codes on a `grid` (the first
  stage's), computing in `dtype`. Raises ValueError for a setting that cannot work."""
  given = sorted(set(FILLED_IN) & set(model_config.keys()))
  if given:
    raise ValueError(f'model.{given[0]}: set by the first stage (num_codes, grid) or by '
                     '--config.dtype, not in config.model; remove it')
  return PRIORS.create(model_config, num_codes=num_codes, grid=tuple(grid), dtype=dtype)


def sample(prior: CodePrior, variables, rng: jax.Array, num: int, temperature: float = 1.0,
           top_k: int = 0) -> jax.Array:
  """`num` code grids [num, h, w] drawn from `prior` position by position in raster order,
  from its logits divided by `temperature`, kept to the `top_k` likeliest codes (0: all)."""
  h, w = prior.grid
  positions = h * w

  def draw(i, carry):
    codes, rng = carry
    logits = prior.apply(variables, codes.reshape(num, h, w), False, method='logits')
    logits = logits.reshape(num, positions, -1)[:, i].astype(jnp.float32) / temperature
    if top_k:
      kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    rng, key = jax.random.split(rng)
    return codes.at[:, i].set(jax.random.categorical(key, logits)), rng

  codes, _ = jax.lax.fori_loop(0, positions, draw,
                               (jnp.zeros((num, positions), jnp.int32), rng))
  return codes.reshape(num, h, w)
