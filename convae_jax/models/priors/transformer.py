"""`transformer`: a decoder-only transformer over the code grid in raster order, as
taming-transformers' second stage (a small GPT): each code predicted from a start token and
the codes before it, through causally masked self-attention with learned position embeddings.
"""
import flax.linen as nn
import jax.numpy as jnp

from convae_jax.models import base
from convae_jax.models.priors.base import PRIORS, CodePrior


class Block(nn.Module):
  """Pre-norm causal self-attention and MLP, each residual."""
  width: int
  num_heads: int
  mlp_ratio: int
  dropout: float
  dtype: str

  @nn.compact
  def __call__(self, x, mask, train: bool):
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                        dropout_rate=self.dropout,
                                        deterministic=not train)(y, y, mask=mask)
    x = x + drop(y)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.Dense(self.mlp_ratio * self.width, dtype=self.dtype)(y)
    y = nn.Dense(self.width, dtype=self.dtype)(nn.gelu(y))
    return x + drop(y)


@PRIORS.register('transformer')
class CausalTransformer(CodePrior):
  width: int = 256
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: int = 4
  dropout: float = 0.1

  def __post_init__(self):
    what = "model 'transformer'"
    self.require_sizes(what, ('width', 'depth', 'num_heads', 'mlp_ratio'))
    base.require(what, 'width', self.width, self.width % self.num_heads == 0,
                 f'divide by num_heads={self.num_heads}')
    super().__post_init__()

  @nn.compact
  def logits(self, codes, train):
    n = codes.shape[0]
    tokens = codes.reshape(n, -1)
    # Position i reads the codes before it: a start token (index num_codes), then codes 0..i-1.
    inputs = jnp.concatenate([jnp.full((n, 1), self.num_codes, jnp.int32), tokens[:, :-1]], 1)
    x = nn.Embed(self.num_codes + 1, self.width, embedding_init=nn.initializers.normal(0.02))(
        inputs)
    positions = self.param('positions', nn.initializers.normal(0.02),
                           (tokens.shape[1], self.width))
    x = nn.Dropout(self.dropout, deterministic=not train)((x + positions).astype(self.dtype))
    mask = nn.make_causal_mask(inputs)
    for _ in range(self.depth):
      x = Block(self.width, self.num_heads, self.mlp_ratio, self.dropout, self.dtype)(
          x, mask, train)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    logits = nn.Dense(self.num_codes, dtype=self.dtype)(x).astype(jnp.float32)
    return logits.reshape(codes.shape + (self.num_codes,))
