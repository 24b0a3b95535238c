"""The colour ops of the on-device augmentation (pure jax), on one float32 image [H, W, 3] in
[0, 1]; `barlow_jax.data.device_augment` samples their parameters and vmaps them over the batch.

They restate the host's ops (`barlow_jax.data.colour`) with the same semantics: torchvision's
`ColorJitter` on float images (clipped to [0, 1] after each op), ITU-R 601-2 grayscale, PIL's
`ImageFilter.GaussianBlur` (three extended box passes per direction composed into one kernel of
variance sigma^2, the JAX restatement of `barlow_jax.data.blur`), solarize and the normalisation.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L") and torchvision use.
_BLUR_PASSES = 3  # PIL's ImagingGaussianBlur: three box blurs per direction.


def to_grayscale(image: jax.Array) -> jax.Array:
  """ITU-R 601-2 luma replicated to 3 channels."""
  gray = jnp.tensordot(image, jnp.asarray(LUMA, image.dtype), axes=([-1], [0]))[..., None]
  return jnp.broadcast_to(gray, image.shape)


def blend(a, b, factor):
  """torchvision `_blend`: factor * a + (1 - factor) * b, clipped to [0, 1]."""
  return jnp.clip(factor * a + (1.0 - factor) * b, 0.0, 1.0)


def adjust_brightness(image, factor):
  return blend(image, 0.0, factor)


def adjust_contrast(image, factor):
  return blend(image, jnp.mean(to_grayscale(image)[..., 0]), factor)


def adjust_saturation(image, factor):
  return blend(image, to_grayscale(image), factor)


def rgb_to_hsv(image: jax.Array) -> jax.Array:
  """[..., 3] RGB in [0, 1] -> HSV, hue in [0, 1) (torchvision `_rgb2hsv`)."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  maxc, minc = jnp.max(image, axis=-1), jnp.min(image, axis=-1)
  flat = maxc == minc
  chroma = maxc - minc
  saturation = chroma / jnp.where(flat, 1.0, maxc)
  divisor = jnp.where(flat, 1.0, chroma)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  hue = jnp.where(
    maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc)
  )  # torchvision's masks: r wins ties, then g.
  hue = jnp.mod(hue / 6.0 + 1.0, 1.0)
  return jnp.stack([hue, saturation, maxc], axis=-1)


def hsv_to_rgb(image: jax.Array) -> jax.Array:
  """[..., 3] HSV -> RGB in [0, 1] (torchvision `_hsv2rgb`)."""
  h, s, v = image[..., 0], image[..., 1], image[..., 2]
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = jnp.mod(i.astype(jnp.int32), 6)
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  # A select per sector (a gather from a [6, 3] table compiles and runs slower).
  sectors = (
    (v, t, p),
    (q, v, p),
    (p, v, t),
    (p, q, v),
    (t, p, v),
    (v, p, q),
  )
  channels = []
  for c in range(3):
    out = sectors[5][c]
    for k in range(4, -1, -1):
      out = jnp.where(i == k, sectors[k][c], out)
    channels.append(out)
  return jnp.stack(channels, axis=-1)


def adjust_hue(image, delta):
  """Adds `delta` (a fraction of a full turn, in [-0.5, 0.5]) to the hue in HSV space."""
  hsv = rgb_to_hsv(image)
  hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + delta, 1.0))
  return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def blur_box_radius(sigma):
  """PIL's `_gaussian_blur_radius(sigma, passes=3)` (libImaging/BoxBlur.c): r = l + a.

  One box pass of radius r has weight 1 on |i| <= l and a on |i| = l + 1, over 2r + 1, and
  variance sigma^2 / 3 (Gwosdek et al., SSVM 2011, eqs. 7, 11, 14).

  Returns:
    (l, a): int32 and float32 arrays of sigma's shape.
  """
  sigma2 = jnp.square(jnp.asarray(sigma, jnp.float32)) / _BLUR_PASSES
  big_l = jnp.sqrt(12.0 * sigma2 + 1.0)
  whole = jnp.floor((big_l - 1.0) / 2.0)  # l
  a = (2.0 * whole + 1.0) * (whole * (whole + 1.0) - 3.0 * sigma2)
  a = a / (6.0 * (sigma2 - jnp.square(whole + 1.0)))
  return whole.astype(jnp.int32), a


def blur_half_width(sigma_max: float) -> int:
  """Static half-width (l + 1 at sigma_max) of one box pass: 2 (5 taps) for sigma_max = 2."""
  # Static, so NumPy: jnp would give a tracer under jit. l grows with sigma (eq. 11).
  sigma2 = np.float32(sigma_max) ** 2 / _BLUR_PASSES
  return int(np.floor((np.sqrt(12.0 * sigma2 + 1.0) - 1.0) / 2.0)) + 1


def blur_radius(sigma_max: float) -> int:
  """Static half-width 3 (l + 1) of the composed kernel at sigma_max (6 at sigma 2.0).

  The host's `blur.kernel_radius`; every sigma <= sigma_max fits (l grows with sigma).
  """
  return _BLUR_PASSES * blur_half_width(sigma_max)


def pil_gaussian_kernel(sigma, radius: int) -> jax.Array:
  """The 1-D kernel of PIL's `GaussianBlur(radius=sigma)`: three extended boxes, composed.

  The JAX restatement of the host's `blur.pil_gaussian_kernel` (same formula, same length
  rules): weights sum to 1, variance sigma^2 (pixels^2), zero beyond 3 (l + 1).

  Args:
    sigma: float32 scalar std in pixels, > 0.
    radius: static half-width, >= `blur_radius(sigma)` (a wider kernel is truncated and
      renormalised, no longer PIL's).

  Returns:
    float32 [2 * radius + 1]; tap i weighs the pixel at offset i - radius.
  """
  whole, a = blur_box_radius(sigma)
  whole = whole.astype(jnp.float32)
  box_half = -(-radius // _BLUR_PASSES)
  taps = jnp.abs(jnp.arange(-box_half, box_half + 1, dtype=jnp.float32))
  box = jnp.where(taps <= whole, 1.0, jnp.where(taps == whole + 1.0, a, 0.0))
  box = box / (2.0 * (whole + a) + 1.0)
  # HIGHEST: accelerators otherwise convolve in bfloat16 passes.
  full = functools.partial(jnp.convolve, mode="full", precision=jax.lax.Precision.HIGHEST)
  kernel = full(full(box, box), box)  # Half-width 3 * box_half.
  extra = _BLUR_PASSES * box_half - radius
  if extra > 0:
    kernel = kernel[extra:-extra]
    kernel = kernel / jnp.sum(kernel)
  return kernel


def _convolve_axis(image, kernel, axis: int):
  """1-D convolution along `axis` with the edge pixel extended (PIL's border rule)."""
  radius = (kernel.shape[0] - 1) // 2
  size = image.shape[axis]
  pad = [(0, 0)] * image.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(image, pad, mode="edge")
  return sum(
    kernel[k] * jax.lax.slice_in_dim(padded, k, k + size, axis=axis) for k in range(2 * radius + 1)
  )


def gaussian_blur(image: jax.Array, sigma, *, radius: int | None = None, half_width=None):
  """PIL's `ImageFilter.GaussianBlur(radius=sigma)` as the host computes it (`data.blur`).

  PIL's three extended-box passes per direction composed into one kernel
  (`pil_gaussian_kernel`), applied down the rows then along them, edge pixels extended, in
  float32: the host's function, so host and device agree to float rounding. Against Pillow
  itself (which rounds to 8 bits after each of its 6 passes and extends each pass's edge) the
  pixels differ by ~0.3/255 on average (tests/test_device_augment.py).

  Args:
    image: float32 [H, W, C] in [0, 1].
    sigma: scalar std in pixels (> 0).
    radius: static half-width of the kernel, `blur_radius(sigma_max)` for the largest sigma.
    half_width: the same as a box pass's half-width (`blur_half_width`), radius = 3 half_width;
      kept for callers of the earlier signature.

  Returns:
    float32 [H, W, C] in [0, 1].
  """
  if radius is None:
    if half_width is None:
      raise ValueError("gaussian_blur needs radius (blur_radius(sigma_max)).")
    radius = _BLUR_PASSES * half_width
  kernel = pil_gaussian_kernel(sigma, radius)
  return _convolve_axis(_convolve_axis(image, kernel, 0), kernel, 1)


def solarize(image, threshold: float = 0.5):
  """x -> 1 - x where x >= threshold (on [0, 1] pixels)."""
  return jnp.where(image >= threshold, 1.0 - image, image)


def normalize(image, mean: Sequence[float], std: Sequence[float]):
  """(x - mean) / std per channel on [0, 1] pixels, as float32."""
  mean_a, std_a = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  return (image.astype(jnp.float32) - mean_a) / std_a


def to_unit(pixels: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [0, 1] (x / 255); float pixels are cast to float32."""
  if pixels.dtype == jnp.uint8:
    return pixels.astype(jnp.float32) / 255.0
  return pixels.astype(jnp.float32)
