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


def _np_coefficients(n_in, n_out, method, outputs=None):
  """PIL's `precompute_coeffs`: [n_out, n_in], each row the normalised taps of one output (or
  only the rows of `outputs`, a range of output indices)."""
  scale = n_in / n_out
  filter_scale = max(scale, 1.0)  # Antialiasing: the kernel widens when downscaling.
  support = (1.0 if method == "bilinear" else 2.0) * filter_scale
  outputs = range(n_out) if outputs is None else outputs
  weights = np.zeros((len(outputs), n_in))
  for row, i in enumerate(outputs):
    center = (i + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    taps = _np_filter(method, (np.arange(lo, hi) - center + 0.5) / filter_scale)
    weights[row, lo:hi] = taps / taps.sum()
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


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
@pytest.mark.parametrize(
  "shape, size, offset, window",
  [
    ((37, 53, 3), (16, 20), (0, 3), (16, 12)),  # Both axes down, a border window.
    ((10, 40, 3), (20, 8), (5, 0), (9, 8)),  # One up, one down.
    ((5, 6, 1), (17, 19), (12, 2), (5, 17)),  # Both up, the far border.
    ((1, 300, 3), (28, 8400), (2, 4188), (24, 24)),  # A strip: centre crop of its resize.
    ((300, 1, 3), (8400, 28), (4188, 2), (24, 24)),
  ],
)
def test_resize_window_is_that_window_of_the_whole_resize(shape, size, offset, window, method):
  pixels = np.random.RandomState(1).randint(0, 256, size=shape).astype(np.uint8)
  rows = _np_coefficients(shape[0], size[0], method, range(offset[0], offset[0] + window[0]))
  cols = _np_coefficients(shape[1], size[1], method, range(offset[1], offset[1] + window[1]))
  expect = np.einsum("ih,hwc,jw->ijc", rows, pixels.astype(np.float64), cols)
  got = resample.resize_window(pixels, size, offset, window, method).numpy()
  assert got.dtype == np.float32 and got.shape == expect.shape
  # float32 sample positions: ~150 +- 1e-5 px far into the strips' resizes, 0.004 levels there
  # (the whole resize too: 0.003).
  np.testing.assert_allclose(got, expect, atol=1e-2)
  whole = resample.resize(pixels, size, method).numpy()
  cut = whole[offset[0] : offset[0] + window[0], offset[1] : offset[1] + window[1]]
  np.testing.assert_allclose(got, cut, atol=1e-2)
  with pytest.raises(ValueError, match="lanczos"):
    resample.resize_window(pixels, size, offset, window, "lanczos")


def _eval_crop_references(image, size, resize, method):
  """The evaluation crop (float [size, size, 3] in [0, 1]) two ways: PIL's coefficients of the
  window alone (float64), and the whole resized image through `crop.resize_image`, cropped."""
  from barlow_jax.data import crop

  h, w = image.shape[:2]
  if resize is None:
    new = (size, size)
  else:
    long = resize * max(h, w) // min(h, w)
    new = (resize, long) if h <= w else (long, resize)
  oy, ox = round((new[0] - size) / 2), round((new[1] - size) / 2)
  rows = _np_coefficients(h, new[0], method, range(oy, oy + size))
  cols = _np_coefficients(w, new[1], method, range(ox, ox + size))
  pil = np.clip(np.einsum("ih,hwc,jw->ijc", rows, image.astype(np.float64), cols) / 255, 0, 1)
  pixels = crop.to_float(image)
  resized = pixels if new == (h, w) else crop.resize_image(pixels, new, method)
  return pil, np.asarray(resized)[oy : oy + size, ox : ox + size], new[0] > h and new[1] > w


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
def test_eval_crop_is_the_centre_of_the_whole_resize(method):
  from barlow_jax.data import crop

  rng = np.random.RandomState(2)
  cases = [
    ((60, 80, 3), 32, 40),  # A photo: down.
    ((20, 30, 3), 32, 40),  # Up.
    ((41, 40, 3), 32, None),  # Straight to size x size.
    ((40, 40, 3), 32, 40),  # Already the resize's size: the crop alone.
    ((1, 300, 3), 24, 28),  # Strips: resized to 28 x 8400, centre 24 x 24.
    ((300, 1, 3), 24, 28),
  ]
  for shape, size, resize in cases:
    pixels = rng.randint(0, 256, size=shape).astype(np.uint8)
    pil, whole, upscale = _eval_crop_references(pixels, size, resize, method)
    # The whole-image path upscales through tf.image.resize's kernels: bicubic's weights come
    # from a 1024-step table there (up to 0.1 levels off PIL's); otherwise both are PIL's.
    whole_tol = 1e-3 if upscale and method == "bicubic" else 4e-5
    for image in (pixels, pixels.astype(np.float32) / 255):
      got = crop.eval_resize_crop(image, size=size, resize=resize, method=method).numpy()
      assert got.shape == (size, size, 3)
      np.testing.assert_allclose(got, pil, atol=4e-5, err_msg=str(shape))  # 0.01 levels.
      np.testing.assert_allclose(got, whole, atol=whole_tol, err_msg=str(shape))


def test_eval_crop_of_a_long_strip_is_pils_and_needs_memory_for_its_output_only():
  import resource

  from barlow_jax.data import crop

  # 1 x 2000, size 224, resize 256: the resize is 256 x 512000 (1.5 GB in float32); the centre
  # crop against PIL's coefficients of its rows and columns alone (float64).
  pixels = np.random.RandomState(3).randint(0, 256, size=(1, 2000, 3)).astype(np.uint8)
  got = crop.eval_resize_crop(pixels, size=224, resize=256, method="bilinear").numpy()
  rows = _np_coefficients(1, 256, "bilinear", range(16, 240))
  cols = _np_coefficients(2000, 512000, "bilinear", range(255888, 255888 + 224))
  expect = np.einsum("ih,hwc,jw->ijc", rows, pixels.astype(np.float64), cols) / 255
  np.testing.assert_allclose(got, expect, atol=4e-5)
  # 1 x 5000 (resize 256 x 1280000: 3.9 GB in float32; built whole, peak RSS grew 0.8 MB per
  # column, docs/benchmarks.md): the crop's own memory only. ru_maxrss only rises, so the call
  # is measured against the peak before it, warmed up on a small image first.
  fn = tf.function(lambda x: crop.eval_resize_crop(x, size=224, resize=256))
  fn(tf.constant(np.full((4, 4, 3), 1, np.uint8)))
  strip = tf.constant(np.full((1, 5000, 3), 128, np.uint8))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  out = fn(strip).numpy()
  growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB.
  np.testing.assert_allclose(out, 128 / 255, atol=1e-6)
  assert growth_mb < 200, growth_mb
