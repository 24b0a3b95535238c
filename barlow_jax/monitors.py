"""The training step's monitors: summaries of the cross-correlation matrix C without holding C
whole, and the effective rank of the representation.

C is [D, D]: 16 GiB in float32 at D = 65536, replicated on every device under a batch-sharded
`jit`. The training step only logs its diagonal, the mean |off-diagonal| and two 64 x 64
pictures, so `correlation_summary` computes C a slab of D/64 rows at a time (256 MiB at
D = 65536) and keeps only those reductions. `heatmap_image` colours the pictures for TensorBoard.

The representation's collapse: `effective_rank` (RankMe) of the backbone's features, from their
Gram matrix's eigenvectors (`_eigenvectors`: XLA's Jacobi kernel on TPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from barlow_jax import losses


def correlation_summary(z_a, z_b, *, eps: float, heatmap_size: int = 64) -> dict[str, jax.Array]:
  """The logged statistics of C = cross_correlation(z_a, z_b), one row slab at a time.

  Args:
    z_a, z_b: [N, D] embeddings of the two views (any float dtype), N the global batch.
    eps: the loss's BatchNorm epsilon (`losses.cross_correlation`).
    heatmap_size: side K of the pictures (K = min(heatmap_size, D)).

  Returns:
    float32 `diag` [D] (C's diagonal), `offdiag_abs_mean` (mean |C_ij| over i != j),
    `heatmap_first` [K, K] (C[:K, :K] exactly) and `heatmap_block_rms` [K, K] (the root mean
    square of each (D // K)^2 tile of C[:K * (D // K), :K * (D // K)]: a block mean would wash
    the diagonal out, one 1 among D / K near-zeros per tile row).
  """
  d = z_a.shape[1]
  k = min(heatmap_size, d)
  b = d // k

  n = z_a.shape[0]
  a = losses.batch_standardise(z_a, eps=eps)
  b_all = losses.batch_standardise(z_b, eps=eps)

  def slab(start, size):  # Rows [start, start + size) of C: [size, D].
    rows = lax.dynamic_slice_in_dim(a, start, size, 1)
    return jnp.einsum("nd,ne->de", rows, b_all, precision=lax.Precision.HIGHEST) / n

  def tile_row(i):
    c = slab(i * b, b)
    diag = jnp.diagonal(lax.dynamic_slice_in_dim(c, i * b, b, 1))
    tiles = jnp.sum(jnp.square(c[:, : k * b].reshape(b, k, b)), axis=(0, 2))
    return diag, jnp.sum(jnp.abs(c)), tiles

  diags, abs_sums, tiles = lax.map(tile_row, jnp.arange(k))
  diag, abs_sum = diags.reshape(-1), jnp.sum(abs_sums)
  if k * b < d:  # The rows left over when K does not divide D.
    rest = slab(k * b, d - k * b)
    diag = jnp.concatenate([diag, jnp.diagonal(rest[:, k * b :])])
    abs_sum = abs_sum + jnp.sum(jnp.abs(rest))
  offdiag = (abs_sum - jnp.sum(jnp.abs(diag))) / float(max(d * d - d, 1))
  return {
    "diag": diag,
    "offdiag_abs_mean": offdiag,
    "heatmap_first": slab(0, k)[:, :k],
    "heatmap_block_rms": jnp.sqrt(tiles / float(b * b)),
  }


def heatmap_image(c, *, vmax: float = 1.0) -> np.ndarray:
  """[K, K] values in [-vmax, vmax] -> [1, K, K, 3] RGB in [0, 1]: blue < 0 < red, white at 0.

  For TensorBoard's image tab (`write_images`): K is upsampled by the largest integer factor
  that keeps the side <= 256 (at least 1).
  """
  v = np.clip(np.asarray(c, np.float32) / vmax, -1.0, 1.0)
  pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
  rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)
  # Nearest-neighbour upsampling so a 64x64 matrix is not blurred by TensorBoard.
  scale = max(1, 256 // rgb.shape[0])
  rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
  return rgb[None]


def heatmap_images(metrics) -> dict[str, np.ndarray]:
  """The step's two pictures of C (its host metrics `heatmap_first`, `heatmap_block_rms`) as
  TensorBoard images, by their tags."""
  return {
    "cross_correlation/first_features": heatmap_image(metrics["heatmap_first"]),
    "cross_correlation/block_rms": heatmap_image(metrics["heatmap_block_rms"]),
  }


def _eigenvectors(gram: jax.Array) -> jax.Array:
  """Eigenvectors (columns) of the symmetric float32 [F, F] `gram`.

  On TPU by XLA's one-sweep-loop Jacobi kernel (the `Eigh` custom call), not JAX's default QDWH
  divide and conquer: that one is traced as a `lax.switch` over one branch per block size (5 at
  F = 2048), each a QDWH iteration, and XLA:TPU's compile of it alone took longer and more host
  memory than a ResNet-18 training step (docs/scaling.md, "What drives the TPU compiler's host
  memory"). Elsewhere LAPACK / cuSOLVER as `jnp.linalg.eigh` (Jacobi has no CPU kernel). Only
  the directions are used (`effective_rank` takes the singular values as |x v_i|); Jacobi stops
  at an off-diagonal tolerance of 1e-6 (relative), which bounds how much of the largest singular
  value leaks into the smallest. Not checked on a TPU here: CI has none.
  """
  jacobi = jax.lax.linalg.EighImplementation.JACOBI
  return jax.lax.platform_dependent(
    gram,
    tpu=lambda g: jax.lax.linalg.eigh(g, implementation=jacobi)[0],
    default=lambda g: jnp.linalg.eigh(g)[1],
  )


def effective_rank(x: jax.Array) -> jax.Array:
  """exp(entropy of the normalised singular values) of x [N, F] (RankMe); 1 when collapsed.

  float32 scalar, whatever x's dtype. The singular values come from the F x F Gram matrix
  x^T x, not from an SVD of x: under a batch-sharded jit the Gram matrix is one all-reduce of
  F x F partial sums, and its eigendecomposition runs replicated on every device, where an SVD
  of the sharded [N, F] array is partitioned by XLA:TPU into a distributed iteration (dozens of
  all-to-all and collective-permute ops per step). Eigenvalues of x^T x resolve singular values
  only down to ~sqrt(float32 eps) of the largest, which inflates the rank of a rank-deficient x
  (1.21 instead of 1 for rank 1); so each singular value is taken as |x v_i|, the norm of x along
  the Gram matrix's eigenvector v_i (one more all-reduce of F values), accurate to float32 eps
  of the largest like an SVD's. Garrido et al. 2023, RankMe (ICML).
  """
  x = x.astype(jnp.float32)
  highest = jax.lax.Precision.HIGHEST  # TPU's default float32 matmul rounds inputs to bfloat16.
  gram = jnp.matmul(x.T, x, precision=highest)
  vectors = _eigenvectors(gram)
  s = jnp.sqrt(jnp.sum(jnp.square(jnp.matmul(x, vectors, precision=highest)), axis=0))
  p = s / jnp.maximum(jnp.sum(s), 1e-12)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.exp(entropy)
