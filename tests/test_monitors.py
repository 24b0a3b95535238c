"""The step's monitors: the slab-wise summary of C against a float64 NumPy C computed whole, and
the effective rank (RankMe) against a float64 NumPy SVD."""

import platform

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import monitors, parallel
from barlow_jax.benchmarks import tpu_slices


def _reference(z_a, z_b, eps, k):
  def normalise(z):
    z = z - z.mean(0)
    return z / np.sqrt(z.var(0) + eps)

  c = normalise(z_a).T @ normalise(z_b) / len(z_a)
  d = c.shape[0]
  k = min(k, d)
  b = d // k
  tiles = c[: k * b, : k * b].reshape(k, b, k, b)
  offdiag = (np.abs(c).sum() - np.abs(np.diag(c)).sum()) / (d * d - d)
  return {
    "diag": np.diag(c),
    "offdiag_abs_mean": offdiag,
    "heatmap_first": c[:k, :k],
    "heatmap_block_rms": np.sqrt(np.mean(tiles**2, axis=(1, 3))),
  }


@pytest.mark.parametrize("d, k", [(200, 8), (203, 8), (70, 64), (5, 64)])
def test_summary_equals_the_whole_matrix(d, k):
  rng = np.random.default_rng(d)
  z_a = rng.normal(size=(32, d)) * rng.uniform(0.5, 3, size=d) + 2.0
  z_b = 0.7 * z_a + rng.normal(size=(32, d))
  summary = jax.jit(lambda a, b: monitors.correlation_summary(a, b, eps=1e-5, heatmap_size=k))(
    z_a.astype(np.float32), z_b.astype(np.float32)
  )
  expected = _reference(z_a, z_b, 1e-5, k)
  for key, value in expected.items():
    assert summary[key].shape == np.shape(value), key
    np.testing.assert_allclose(summary[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


def test_heatmap_image_is_red_above_zero_blue_below_white_at_zero_and_upsampled():
  image = monitors.heatmap_image(np.array([[1.0, 0.0], [-2.0, 0.5]]))
  assert image.shape == (1, 256, 256, 3)  # 2 x 2 repeated 128 times per side.
  np.testing.assert_allclose(image[0, 0, 0], [1.0, 0.0, 0.0])
  np.testing.assert_allclose(image[0, 0, 255], [1.0, 1.0, 1.0])
  np.testing.assert_allclose(image[0, 255, 0], [0.0, 0.0, 1.0])  # Clipped at -vmax.
  np.testing.assert_allclose(image[0, 255, 255], [1.0, 0.5, 0.5])
  np.testing.assert_allclose(
    monitors.heatmap_image(np.full((64, 64), 0.5), vmax=0.5)[0, 0, 0], [1, 0, 0]
  )


# effective_rank: RankMe from the Gram matrix's eigenvectors against a float64 NumPy SVD of the
# same matrix.


def _rankme(x: np.ndarray) -> float:
  """exp(entropy of s / sum(s)) with s the float64 singular values of x (RankMe's definition)."""
  s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
  p = s / s.sum()
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def _matrix(n, f, rank, offset, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, f))
  # Post-ReLU features with a large common mean: the largest singular value dwarfs the rest,
  # where eigenvalues of x^T x alone lose the small ones in float32 round-off.
  return (np.maximum(x + offset, 0.0) if offset else x).astype(np.float32)


@pytest.mark.parametrize(
  "n, f, rank, offset",
  [
    (256, 64, 64, 0.0),  # Full rank.
    (256, 64, 5, 0.0),  # Rank-deficient: 59 singular values are 0.
    (64, 128, 1, 0.0),  # Rank 1 (collapsed): RankMe 1.
    (128, 256, 256, 3.0),  # Wider than the batch, one dominant direction.
    (512, 512, 10, 0.0),
  ],
)
def test_equals_float64_svd(n, f, rank, offset):
  x = _matrix(n, f, rank, offset)
  got = float(jax.jit(monitors.effective_rank)(x))
  np.testing.assert_allclose(got, _rankme(x), rtol=2e-4)


def test_zero_matrix_is_rank_one():
  assert float(monitors.effective_rank(np.zeros((16, 8), np.float32))) == pytest.approx(1.0)


def test_bfloat16_input_is_computed_in_float32():
  x = _matrix(128, 32, 32, 0.0)
  bf16 = np.asarray(jax.numpy.asarray(x, jax.numpy.bfloat16))
  got = monitors.effective_rank(jax.numpy.asarray(bf16))
  assert got.dtype == np.float32
  np.testing.assert_allclose(float(got), _rankme(bf16.astype(np.float32)), rtol=2e-4)


def test_batch_sharded_equals_unsharded(devices):
  x = _matrix(128, 48, 7, 0.5)
  mesh = parallel.create_mesh(devices)
  sharded = jax.device_put(x, NamedSharding(mesh, P(parallel.DATA_AXIS)))
  got = float(jax.jit(monitors.effective_rank)(sharded))
  np.testing.assert_allclose(got, _rankme(x), rtol=2e-4)


@pytest.mark.skipif(
  not (platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")),
  reason=f"libtpu is built for x86-64 Linux only; this is {platform.system()} {platform.machine()}",
)
def test_tpu_eigendecomposition_is_one_jacobi_kernel():
  # JAX's default TPU eigh for F > 256 is a QDWH divide and conquer traced as 11 while loops
  # and a switch over block sizes; its XLA:TPU compile at F = 2048 alone cost more host time and
  # memory than a ResNet-18 step (docs/scaling.md). On TPU the rank uses XLA's Eigh kernel.
  mesh = parallel.create_mesh(tpu_slices.slice_devices(tpu_slices.parse_topology("v5e:2x2")))
  x = jax.ShapeDtypeStruct((16, 512), np.float32, sharding=parallel.batch_sharding(mesh))
  text = jax.jit(monitors.effective_rank).lower(x).as_text()
  assert "@Eigh" in text
  assert "stablehlo.while" not in text


def test_effective_rank_counts_equal_directions():
  x = np.zeros((8, 6), np.float32)
  x[:3, :3] = np.eye(3) * 2.0
  np.testing.assert_allclose(float(monitors.effective_rank(x)), 3.0, rtol=1e-5)
  np.testing.assert_allclose(float(monitors.effective_rank(np.ones((8, 6)))), 1.0, rtol=1e-4)
