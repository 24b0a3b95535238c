"""PIL's Gaussian blur: the composed kernel against a float64 NumPy restatement of Pillow's three
extended box passes, its spread against sigma, and the pixels against Pillow itself."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from barlow_jax.data import blur, colour  # noqa: E402


def _np_box(sigma):
  """Pillow's extended box (libImaging/BoxBlur.c, 3 passes) in float64: taps -(l+1)..l+1."""
  sigma2 = sigma**2 / 3.0
  l_int = int(np.floor((np.sqrt(12 * sigma2 + 1) - 1) / 2))
  a = (2 * l_int + 1) * (l_int * (l_int + 1) - 3 * sigma2) / (6 * (sigma2 - (l_int + 1) ** 2))
  box = np.ones(2 * l_int + 3)
  box[0] = box[-1] = a
  return box / (2 * (l_int + a) + 1)


def _np_three_passes(row, sigma):
  """Three box passes on a 1-D signal, each extending its own input's edge pixels (Pillow)."""
  box = _np_box(sigma)
  half = len(box) // 2
  for _ in range(3):
    padded = np.pad(row, half, mode="edge")
    row = np.convolve(padded, box, mode="valid")
  return row


@pytest.mark.parametrize("sigma", [0.1, 0.25, 0.5, 1.0, 1.37, 2.0])
def test_kernel_is_three_box_passes_with_variance_sigma_squared(sigma):
  radius = blur.kernel_radius(2.0)
  kernel = blur.pil_gaussian_kernel(sigma, radius).numpy().astype(np.float64)
  impulse = np.zeros(2 * radius + 1)
  impulse[radius] = 1.0
  np.testing.assert_allclose(kernel, _np_three_passes(impulse, sigma), atol=1e-6)
  taps = np.arange(-radius, radius + 1)
  assert abs(kernel.sum() - 1) < 1e-6
  np.testing.assert_allclose(np.sqrt((kernel * taps**2).sum()), sigma, rtol=1e-5)
  assert blur.kernel_radius(2.0) == 6 and blur.kernel_radius(0.5) == 3


def _edge_spread(blurred_row):
  """Std (px) of the derivative of a blurred rising step: the blur's spread."""
  d = np.diff(blurred_row.astype(np.float64))
  x = np.arange(len(d))
  mean = (d * x).sum() / d.sum()
  return np.sqrt((d * (x - mean) ** 2).sum() / d.sum())


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0, 2.0])
def test_step_edge_spreads_by_sigma_like_pil(sigma):
  from PIL import Image, ImageFilter

  step = np.zeros((9, 40, 3), np.float32)
  step[:, 20:] = 1.0
  ours = colour.gaussian_blur(tf.constant(step), sigma, radius=colour.blur_radius(2.0)).numpy()
  assert abs(_edge_spread(ours[4, :, 0]) - sigma) <= 0.1 * sigma
  pil = Image.fromarray((step[..., 0] * 255).astype(np.uint8)).filter(
    ImageFilter.GaussianBlur(radius=sigma)
  )
  assert abs(_edge_spread(np.asarray(pil)[4]) - sigma) <= 0.1 * sigma  # The target itself.


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_pixels_agree_with_pil_on_a_photo(sigma):
  from PIL import Image, ImageFilter
  from sklearn.datasets import load_sample_image

  photo = load_sample_image("china.jpg")[::2, ::2]  # 214 x 320, a real photo.
  pil = np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(radius=sigma)))
  kernel = blur.pil_gaussian_kernel([sigma], blur.kernel_radius(2.0))
  ours = blur.blur_batch(photo[None].astype(np.float32), kernel).numpy()[0]
  diff = np.abs(ours - pil)
  # Pillow rounds to uint8 after each of its 6 passes (a 104.2 becomes 103 at sigma 0.3) and
  # extends each pass's edge: ~0.5/255 on average, ~2/255 at the 99th percentile.
  p99 = np.percentile(diff, 99)
  assert diff.mean() < 0.7 and p99 < 2.5, (diff.mean(), p99)


def test_batch_blur_uses_each_examples_kernel_and_keeps_constants():
  rng = np.random.RandomState(0)
  images = rng.uniform(size=(3, 7, 5, 3)).astype(np.float32)  # Smaller than the kernel.
  sigmas = np.array([0.2, 1.1, 2.0], np.float32)
  batch = colour.gaussian_blur(tf.constant(images), sigmas, radius=6).numpy()
  for image, sigma, got in zip(images, sigmas, batch):
    one = colour.gaussian_blur(tf.constant(image), sigma, radius=6).numpy()
    np.testing.assert_allclose(got, one, atol=1e-6)
    expect = np.apply_along_axis(_np_three_passes_composed, 0, image, sigma)
    expect = np.apply_along_axis(_np_three_passes_composed, 1, expect, sigma)
    np.testing.assert_allclose(got, expect, atol=1e-5)
  const = np.full((1, 8, 8, 3), 0.37, np.float32)
  blurred = colour.gaussian_blur(tf.constant(const), [2.0], radius=6).numpy()
  np.testing.assert_allclose(blurred, const, rtol=1e-6)


def _np_three_passes_composed(row, sigma):
  """The composed kernel applied once with the input's edge pixels extended (float64)."""
  radius = 6
  impulse = np.zeros(2 * radius + 1)
  impulse[radius] = 1.0
  kernel = _np_three_passes(impulse, sigma)
  return np.convolve(np.pad(row.astype(np.float64), radius, mode="edge"), kernel, mode="valid")
