"""The matrix kernels behind `barlow_jax.losses`: the three ways to reduce C = A^T B / N.

Each takes the normalised [N_local, D] float32 views `a`, `b` of one pair (as `losses` makes them),
the global batch size and the mesh axis (None when the arrays are the whole batch), and returns the
statistic of C the loss needs without the caller caring how it was formed: "dense" builds C,
"gram" uses the N x N Gram matrices, "blockwise" scans column tiles of C under `jax.checkpoint`.
Costs and the rule that picks one are in the `barlow_jax.losses` docstring. Like `losses`, this
module imports only jax.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

# Default blockwise tile: D x block_size float32 values at most this many bytes.
BLOCK_TILE_BYTES = 128 << 20

_HIGHEST = lax.Precision.HIGHEST


def psum(x, axis_name):
  return x if axis_name is None else lax.psum(x, axis_name)


def column_dots(a, b, n_global: int, axis_name) -> jax.Array:
  """diag(A^T B) / N: [D]."""
  return psum(jnp.sum(a * b, axis=0), axis_name) / n_global


def full_matrix(a, b, n_global: int, axis_name) -> jax.Array:
  """C = A^T B / N: [D, D]."""
  c = jnp.einsum("nd,ne->de", a, b, precision=_HIGHEST)
  return psum(c, axis_name) / n_global


def offdiag_mask(shape, column_offset=0) -> jax.Array:
  rows = lax.broadcasted_iota(jnp.int32, shape, 0)
  cols = lax.broadcasted_iota(jnp.int32, shape, 1) + column_offset
  return rows != cols


def offdiag_sumsq_dense(a, b, n_global, axis_name) -> jax.Array:
  c = full_matrix(a, b, n_global, axis_name)
  return jnp.sum(jnp.where(offdiag_mask(c.shape), c * c, 0.0))


@jax.custom_vjp
def _frobenius_sq_via_gram(a, b) -> jax.Array:
  """||A^T B||_F^2 = sum((A A^T) * (B B^T)) for [N, D] arrays, without the D x D product."""
  return _frobenius_sq_via_gram_fwd(a, b)[0]


def _frobenius_sq_via_gram_fwd(a, b):
  gram_a = jnp.einsum("nd,md->nm", a, a, precision=_HIGHEST)
  gram_b = jnp.einsum("nd,md->nm", b, b, precision=_HIGHEST)
  return jnp.sum(gram_a * gram_b), (a, b, gram_a, gram_b)


def _frobenius_sq_via_gram_bwd(residuals, cotangent):
  # d/dA tr(A A^T B B^T) = 2 (B B^T) A: one N x N x D product per view. Autodiff of the einsum
  # cannot use the symmetry of A A^T and spends two.
  a, b, gram_a, gram_b = residuals
  grad_a = jnp.einsum("nm,md->nd", gram_b, a, precision=_HIGHEST)
  grad_b = jnp.einsum("nm,md->nd", gram_a, b, precision=_HIGHEST)
  return 2.0 * cotangent * grad_a, 2.0 * cotangent * grad_b


_frobenius_sq_via_gram.defvjp(_frobenius_sq_via_gram_fwd, _frobenius_sq_via_gram_bwd)


def offdiag_sumsq_gram(a, b, diag, n_global, axis_name) -> jax.Array:
  """sum_{i != j} C_ij^2 = ||A^T B||_F^2 / N^2 - sum_i C_ii^2, from N x N Gram matrices."""
  if axis_name is None:
    return _frobenius_sq_via_gram(a, b) / (float(n_global) ** 2) - jnp.sum(diag * diag)
  frobenius_sq = lax.psum(_frobenius_sq_partial(a, b, axis_name), axis_name)
  return frobenius_sq / (float(n_global) ** 2) - jnp.sum(diag * diag)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _frobenius_sq_partial(a, b, axis_name) -> jax.Array:
  """This device's share of ||A^T B||_F^2: sum over its rows of (A A^T) * (B B^T).

  Its gradient is that of the psum over devices (each device's rows of 2 (B B^T) A), which is
  what the surrounding psum needs: every device receives the same cotangent for its share.
  Autodiff would spend a second N_local x N x D product and a reduce-scatter per view.
  """
  return _frobenius_sq_partial_fwd(a, b, axis_name)[0]


def _frobenius_sq_partial_fwd(a, b, axis_name):
  a_all = lax.all_gather(a, axis_name, tiled=True)
  b_all = lax.all_gather(b, axis_name, tiled=True)
  # This device's rows of A A^T and B B^T: [N_local, N_global].
  gram_a = jnp.einsum("nd,md->nm", a, a_all, precision=_HIGHEST)
  gram_b = jnp.einsum("nd,md->nm", b, b_all, precision=_HIGHEST)
  return jnp.sum(gram_a * gram_b), (a_all, b_all, gram_a, gram_b)


def _frobenius_sq_partial_bwd(axis_name, residuals, cotangent):
  a_all, b_all, gram_a, gram_b = residuals
  grad_a = jnp.einsum("nm,md->nd", gram_b, a_all, precision=_HIGHEST)
  grad_b = jnp.einsum("nm,md->nd", gram_a, b_all, precision=_HIGHEST)
  return 2.0 * cotangent * grad_a, 2.0 * cotangent * grad_b


_frobenius_sq_partial.defvjp(_frobenius_sq_partial_fwd, _frobenius_sq_partial_bwd)


def default_block_size(d: int) -> int:
  """Columns per tile of `method="blockwise"` for embedding width `d` (a multiple of 128, <= d)."""
  block = max(128, (BLOCK_TILE_BYTES // (4 * d)) // 128 * 128)
  return min(block, d)


def blockwise_reduce(
  a,
  b,
  n_global: int,
  axis_name,
  block_size: int,
  tile_fn: Callable[[jax.Array, jax.Array], jax.Array],
) -> jax.Array:
  """Applies `tile_fn(c_tile, off_diagonal_mask)` to column tiles of C = A^T B / N.

  Returns the per-tile results stacked: [num_tiles]. Columns past D (padding) are masked out.
  """
  n_local, d = b.shape
  num_tiles = -(-d // block_size)
  padded = num_tiles * block_size
  if padded != d:
    b = jnp.pad(b, ((0, 0), (0, padded - d)))
  tiles = b.reshape(n_local, num_tiles, block_size).transpose(1, 0, 2)

  # Saves only the tile index and inputs per step; the D x block_size tile of C is recomputed in
  # the backward pass, so neither pass ever holds more than one tile.
  @jax.checkpoint
  def body(carry, xs):
    index, b_tile = xs
    c = jnp.einsum("nd,nt->dt", a, b_tile, precision=_HIGHEST)
    c = psum(c, axis_name) / n_global
    offset = index * block_size
    mask = offdiag_mask(c.shape, offset)
    mask &= lax.broadcasted_iota(jnp.int32, c.shape, 1) + offset < d
    return carry, tile_fn(c, mask)

  _, per_tile = lax.scan(body, None, (jnp.arange(num_tiles), tiles))
  return per_tile


def offdiag_sumsq_blockwise(a, b, n_global, axis_name, block_size) -> jax.Array:
  tile_fn = lambda c, mask: jnp.sum(jnp.where(mask, c * c, 0.0))
  return jnp.sum(blockwise_reduce(a, b, n_global, axis_name, block_size, tile_fn))
