"""`pixelcnn`: a gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders") over embedded codes, the prior of the VQ-VAE paper.

Two stacks of gated convolutions, with no blind spot: the vertical stack sees the rows above
and the current row (it reaches the output only shifted down a row), the horizontal stack
the current row up to the current position; the first layer's horizontal stack is shifted
right, so no position sees its own code.
"""
import flax.linen as nn
import jax.numpy as jnp

from convae_jax.models import base
from convae_jax.models.priors.base import PRIORS, CodePrior


def shifted_down(x):
  return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def shifted_right(x):
  return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


def gate(x):
  a, b = jnp.split(x, 2, axis=-1)
  return jnp.tanh(a) * nn.sigmoid(b)


class GatedLayer(nn.Module):
  width: int
  kernel_size: int
  first: bool
  dropout: float
  dtype: str

  @nn.compact
  def __call__(self, v, h, train: bool):
    half = self.kernel_size // 2
    conv = lambda shape, name: nn.Conv(2 * self.width, shape, padding='VALID', dtype=self.dtype,
                                       name=name)
    # Vertical: rows r-half..r, columns c-half..c+half.
    v_features = conv((half + 1, self.kernel_size), 'vertical')(
        jnp.pad(v, ((0, 0), (half, 0), (half, half), (0, 0))))
    # Horizontal: columns c-half..c of row r (c-half-1..c-1 in the first layer), plus the
    # vertical features of the row above.
    h_in = shifted_right(h) if self.first else h
    h_features = conv((1, half + 1), 'horizontal')(jnp.pad(h_in, ((0, 0), (0, 0), (half, 0),
                                                                  (0, 0))))
    h_features = h_features + nn.Dense(2 * self.width, dtype=self.dtype, name='vertical_to_h')(
        shifted_down(v_features))
    out = nn.Dense(self.width, dtype=self.dtype, name='h_out')(gate(h_features))
    out = nn.Dropout(self.dropout, deterministic=not train)(out)
    return gate(v_features), out if self.first else h + out


@PRIORS.register('pixelcnn')
class GatedPixelCNN(CodePrior):
  width: int = 128
  depth: int = 8
  kernel_size: int = 5
  dropout: float = 0.1

  def __post_init__(self):
    what = "model 'pixelcnn'"
    self.require_sizes(what, ('width', 'depth'))
    base.require(what, 'kernel_size', self.kernel_size, base.is_int(self.kernel_size) and
                 self.kernel_size >= 3 and self.kernel_size % 2 == 1, 'be an odd integer >= 3')
    super().__post_init__()

  @nn.compact
  def logits(self, codes, train):
    x = nn.Embed(self.num_codes, self.width)(codes).astype(self.dtype)
    v = h = x
    for i in range(self.depth):
      v, h = GatedLayer(self.width, self.kernel_size, i == 0, self.dropout, self.dtype)(
          v, h, train)
    x = nn.Dense(self.width, dtype=self.dtype)(nn.relu(h))
    return nn.Dense(self.num_codes, dtype=self.dtype)(nn.relu(x)).astype(jnp.float32)
