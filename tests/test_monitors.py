"""The slab-wise summary of C against a float64 NumPy C computed whole."""

import jax
import numpy as np
import pytest

from barlow_jax import monitors


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
