"""The matrix kernels behind `barlow_jax.losses`: the three ways to reduce C = A^T B / N.

Each takes the normalised [N_local, D] float32 views `a`, `b` of one pair (as `losses` makes them),
the global batch size and the mesh axis (None when the arrays are the whole batch), and returns the
statistic of C the loss needs without the caller caring how it was formed: "dense" builds C,
"gram" uses the N x N Gram matrices, "blockwise" scans column tiles of C under `jax.checkpoint`.
Costs and the rule that picks one are in the `barlow_jax.losses` docstring. Like `losses`, this
module imports only jax.

Explicit sharding. On a mesh with Explicit axis types (`jax.make_mesh`'s default in jax 0.10, with
sharding-in-types), a contraction over a sharded axis must say how its result is sharded, or
jax refuses it ("Contracting dimensions are sharded and it is ambiguous ..."). `einsum` below
names the result's sharding from its operands' (a contracted axis's sharding becomes a sum
over that mesh axis; a mesh axis already used by an earlier output dimension is not used twice),
so the kernels compute the same values and gradients on Explicit meshes as on Auto ones, where
the sharding of every intermediate is XLA's choice and `out_sharding` is never passed.
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


def explicit_sharding(x):
  """`x`'s sharding type when its mesh has an Explicit axis (a `NamedSharding`), else None."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or not getattr(mesh, "explicit_axes", ()):
    return None
  return sharding


def like(x, reference):
  """`x` resharded to `reference`'s sharding when both are explicitly sharded and differ.

  On an Explicit mesh an elementwise op of two differently sharded arrays is an error; on an
  Auto mesh (or outside any mesh) `x` is returned as it is.
  """
  target, current = explicit_sharding(reference), explicit_sharding(x)
  if target is None or current is None or tuple(current.spec) == tuple(target.spec):
    return x
  return jax.sharding.reshard(x, target)


def _mesh_axes(entry) -> tuple:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


def einsum(subscripts: str, x, y) -> jax.Array:
  """`jnp.einsum(subscripts, x, y)` at HIGHEST precision, legal on Explicit meshes too.

  On an Explicit mesh each output dimension keeps the sharding its letter has in `x` (else in
  `y`) unless that mesh axis is already taken by an earlier output dimension; contracted letters
  leave the sharding, so their partial sums are all-reduced. Elsewhere `out_sharding` is unset.
  """
  sharding = explicit_sharding(x) or explicit_sharding(y)
  if sharding is None:
    return jnp.einsum(subscripts, x, y, precision=_HIGHEST)
  inputs, output = subscripts.split("->")
  letters = {}
  for operand_letters, operand in zip(inputs.split(","), (x, y), strict=True):
    operand_sharding = explicit_sharding(operand)
    spec = tuple(operand_sharding.spec) if operand_sharding is not None else ()
    for i, letter in enumerate(operand_letters):
      entry = spec[i] if i < len(spec) else None
      if letters.get(letter) is None:
        letters[letter] = entry
  used, out_spec = set(), []
  for letter in output:
    axes = _mesh_axes(letters.get(letter))
    if not axes or used.intersection(axes):
      out_spec.append(None)
      continue
    used.update(axes)
    out_spec.append(letters[letter])
  out_sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*out_spec))
  return jnp.einsum(subscripts, x, y, precision=_HIGHEST, out_sharding=out_sharding)


def column_dots(a, b, n_global: int, axis_name) -> jax.Array:
  """diag(A^T B) / N: [D]."""
  return psum(jnp.sum(a * b, axis=0), axis_name) / n_global


def full_matrix(a, b, n_global: int, axis_name) -> jax.Array:
  """C = A^T B / N: [D, D]."""
  c = einsum("nd,ne->de", a, b)
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
  gram_a = einsum("nd,md->nm", a, a)
  gram_b = einsum("nd,md->nm", b, b)
  return jnp.sum(gram_a * gram_b), (a, b, gram_a, gram_b)


def _frobenius_sq_via_gram_bwd(residuals, cotangent):
  # d/dA tr(A A^T B B^T) = 2 (B B^T) A: one N x N x D product per view. Autodiff of the einsum
  # cannot use the symmetry of A A^T and spends two.
  a, b, gram_a, gram_b = residuals
  grad_a = einsum("nm,md->nd", gram_b, a)
  grad_b = einsum("nm,md->nd", gram_a, b)
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
  gram_a = einsum("nd,md->nm", a, a_all)
  gram_b = einsum("nd,md->nm", b, b_all)
  return jnp.sum(gram_a * gram_b), (a_all, b_all, gram_a, gram_b)


def _frobenius_sq_partial_bwd(axis_name, residuals, cotangent):
  a_all, b_all, gram_a, gram_b = residuals
  grad_a = einsum("nm,md->nd", gram_b, a_all)
  grad_b = einsum("nm,md->nd", gram_a, b_all)
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
  sharding = explicit_sharding(b)
  if sharding is not None and len(sharding.spec) > 1 and sharding.spec[1] is not None:
    # Tiles are cut along the feature axis: gather it whole (the batch axis stays split).
    spec = jax.sharding.PartitionSpec(sharding.spec[0], None)
    b = jax.sharding.reshard(b, jax.sharding.NamedSharding(sharding.mesh, spec))
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
    c = einsum("nd,nt->dt", a, b_tile)
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
