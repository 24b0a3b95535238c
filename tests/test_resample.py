"""The antialiased resize: PIL's resampling (libImaging/Resample.c) restated in float64 NumPy, and
`tf.image.resize(antialias=True)`, which it replaces on the host."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from barlow_jax.data import resample  # noqa: E402


def _np_filter(method, x):
  x = np.abs(x)
  if method == "bilinear":
    return np.maximum(1.0 - x, 0.0)
  a = -0.5  # PIL's bicubic (Keys, a = -0.5), support 2.
  return np.where(
    x < 1.0,
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
    np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0),
  )


def _np_coefficients(n_in, n_out, method):
  """PIL's `precompute_coeffs`: [n_out, n_in], each row the normalised taps of one output."""
  scale = n_in / n_out
  filter_scale = max(scale, 1.0)  # Antialiasing: the kernel widens when downscaling.
  support = (1.0 if method == "bilinear" else 2.0) * filter_scale
  weights = np.zeros((n_out, n_in))
  for i in range(n_out):
    center = (i + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    taps = _np_filter(method, (np.arange(lo, hi) - center + 0.5) / filter_scale)
    weights[i, lo:hi] = taps / taps.sum()
  return weights


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
@pytest.mark.parametrize(
  "shape, size",
  [
    ((37, 53, 3), (16, 20)),  # Both axes down.
    ((10, 40, 3), (20, 8)),  # One up, one down.
    ((2, 30, 25, 3), (31, 12)),  # A batch.
    ((5, 6, 1), (7, 9)),  # Both up, one channel.
  ],
)
def test_resize_is_pils_resampling_and_tf_image_resize(shape, size, method):
  pixels = np.random.RandomState(0).randint(0, 256, size=shape).astype(np.uint8)
  rows = _np_coefficients(shape[-3], size[0], method)
  cols = _np_coefficients(shape[-2], size[1], method)
  expect = np.einsum("ih,...hwc,jw->...ijc", rows, pixels.astype(np.float64), cols)
  for image in (pixels, pixels.astype(np.float32)):  # uint8 keeps its units: [0, 255].
    got = resample.resize(image, size, method).numpy()
    assert got.dtype == np.float32 and got.shape == expect.shape
    np.testing.assert_allclose(got, expect, atol=1e-3)  # float32 rounding at 255 scale.
  tf_resize = tf.image.resize(pixels.astype(np.float32), size, method, antialias=True).numpy()
  np.testing.assert_allclose(resample.resize(pixels, size, method).numpy(), tf_resize, atol=1e-4)


def test_resize_rejects_another_method_or_rank():
  with pytest.raises(ValueError, match="lanczos"):
    resample.resize(np.zeros((4, 4, 3), np.uint8), [2, 2], "lanczos")
  with pytest.raises(ValueError, match="rank|shape"):
    resample.resize(np.zeros((4, 4), np.uint8), [2, 2], "bicubic")
