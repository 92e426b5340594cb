"""A learned Gaussian prior over the whole latent grid whose covariance is diagonal plus low
rank, N(loc, diag(exp(log_diag)) + factor factor^T), for the `gaussian` bottleneck's
`prior='low_rank'`.

N(0, I) draws each latent position independently, so prior samples of a spatial latent are
patchworks of unrelated positions; the factor's `rank` columns learn how positions and
channels vary together (trained by the KL term, which draws the prior towards the
posteriors' spread), and so do the samples. Every operation goes through the Woodbury
identity with one rank x rank Cholesky factor per call, so the cost grows with
grid size x rank^2, not with the grid size cubed.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


class LowRankGaussian(nn.Module):
  """Called with the latent grid's shape (without the batch), it gives its parameters."""
  rank: int

  @nn.compact
  def __call__(self, grid_shape: tuple[int, ...]):
    dims = math.prod(grid_shape)
    if self.has_variable('params', 'loc') and self.get_variable('params', 'loc').size != dims:
      raise ValueError(
          f"model.bottleneck 'gaussian': its low-rank prior was learned on a latent grid of "
          f"{self.get_variable('params', 'loc').size} values, not {grid_shape} = {dims}; "
          'sample at the training image size')
    loc = self.param('loc', nn.initializers.zeros, (dims,))
    log_diag = self.param('log_diag', nn.initializers.zeros, (dims,))
    # Small, not zero: the KL's gradient with respect to the factor vanishes at zero.
    factor = self.param('factor', nn.initializers.normal(0.01), (dims, self.rank))
    return loc, log_diag, factor

  def _parts(self, grid_shape):
    """loc, log_diag, factor, diag^-1 factor, the Cholesky factor of I + factor^T diag^-1
    factor, and log det of the covariance."""
    loc, log_diag, factor = self(grid_shape)
    scaled = factor * jnp.exp(-log_diag)[:, None]
    inner = jnp.eye(self.rank) + factor.T @ scaled
    cholesky = jnp.linalg.cholesky(inner)
    log_det = jnp.sum(log_diag) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(cholesky)))
    return loc, log_diag, factor, scaled, cholesky, log_det

  @staticmethod
  def _quadratic(deltas, log_diag, scaled, cholesky):
    """delta^T covariance^-1 delta for each row of `deltas` [n, dims]."""
    projected = jax.scipy.linalg.solve_triangular(cholesky, (deltas @ scaled).T, lower=True)
    return (jnp.sum(jnp.square(deltas) * jnp.exp(-log_diag), axis=1) -
            jnp.sum(jnp.square(projected), axis=0))

  def kl(self, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, diag(exp(logvar))) || prior) per example, in nats."""
    loc, log_diag, _, scaled, cholesky, log_det = self._parts(mean.shape[1:])
    mean, logvar = _flat(mean), _flat(logvar)
    # trace(cov^-1 diag(var)) = sum_i var_i (1 / diag_i - |cholesky^-1 scaled_i|^2).
    leverage = jnp.sum(jnp.square(
        jax.scipy.linalg.solve_triangular(cholesky, scaled.T, lower=True)), axis=0)
    trace = jnp.exp(logvar) @ (jnp.exp(-log_diag) - leverage)
    quadratic = self._quadratic(mean - loc, log_diag, scaled, cholesky)
    return 0.5 * (trace + quadratic - mean.shape[1] + log_det - jnp.sum(logvar, axis=1))

  def log_prob(self, z: jax.Array) -> jax.Array:
    """log density of each example's latent grid, in nats."""
    loc, log_diag, _, scaled, cholesky, log_det = self._parts(z.shape[1:])
    z = _flat(z)
    quadratic = self._quadratic(z - loc, log_diag, scaled, cholesky)
    return -0.5 * (quadratic + log_det + z.shape[1] * math.log(2.0 * math.pi))

  def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Draws [shape[0], *grid] latents: loc + diag^1/2 noise + factor noise'."""
    loc, log_diag, factor = self(shape[1:])
    diag_key, factor_key = jax.random.split(key)
    z = (loc + jnp.exp(0.5 * log_diag) * jax.random.normal(diag_key, (shape[0], loc.size)) +
         jax.random.normal(factor_key, (shape[0], self.rank)) @ factor.T)
    return z.reshape(shape)
