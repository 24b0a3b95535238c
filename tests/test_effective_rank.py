"""RankMe from the Gram matrix's eigenvectors against a float64 NumPy SVD of the same matrix."""

import platform

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import parallel, train_step
from barlow_jax.benchmarks import tpu_slices


def _reference(x: np.ndarray) -> float:
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
  got = float(jax.jit(train_step.effective_rank)(x))
  np.testing.assert_allclose(got, _reference(x), rtol=2e-4)


def test_zero_matrix_is_rank_one():
  assert float(train_step.effective_rank(np.zeros((16, 8), np.float32))) == pytest.approx(1.0)


def test_bfloat16_input_is_computed_in_float32():
  x = _matrix(128, 32, 32, 0.0)
  bf16 = np.asarray(jax.numpy.asarray(x, jax.numpy.bfloat16))
  got = train_step.effective_rank(jax.numpy.asarray(bf16))
  assert got.dtype == np.float32
  np.testing.assert_allclose(float(got), _reference(bf16.astype(np.float32)), rtol=2e-4)


def test_batch_sharded_equals_unsharded(devices):
  x = _matrix(128, 48, 7, 0.5)
  mesh = parallel.create_mesh(devices)
  sharded = jax.device_put(x, NamedSharding(mesh, P(parallel.DATA_AXIS)))
  got = float(jax.jit(train_step.effective_rank)(sharded))
  np.testing.assert_allclose(got, _reference(x), rtol=2e-4)


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
  text = jax.jit(train_step.effective_rank).lower(x).as_text()
  assert "@Eigh" in text
  assert "stablehlo.while" not in text
