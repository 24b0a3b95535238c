"""The colour augmentations on the accelerator, inside the jitted train step (pure jax).

With `config.augment.on_device`, the host only decodes, crops and flips, and sends uint8 crops;
this module then applies, per example and per view, the rest of the view's transform
(`barlow_jax.data.augment` is the host version of the same functions, on the same [0, 1] pixels):

  1. colour jitter with `jitter_prob`: brightness, contrast, saturation and hue in a random order
     (torchvision `ColorJitter` semantics on float images, clipped to [0, 1] after each op),
  2. random RGB channel permutation with `channel_permute_prob`,
  3. grayscale (ITU-R 601-2 luma, replicated to 3 channels) with `grayscale_prob`,
  4. Gaussian blur with `blur_prob`, sigma ~ U(blur_sigma): PIL's `ImageFilter.GaussianBlur`
     (the Barlow Twins reference main.py's `GaussianBlur`), see `gaussian_blur`,
  5. solarize (x -> 1 - x where x >= `solarize_threshold`) with `solarize_prob`,
  6. additive Gaussian noise of std `noise_std`, clipped to [0, 1],

then normalises by `config.augment.mean` / `std`. Every op runs on every example and a select
keeps it where it fired (no data-dependent control flow under `vmap`).

Randomness: the parameters of example i of the global batch at step t, view v (0 = view_a,
1 = view_b) come from the key `key(seed)` folded with a constant of this module, then t, i and v
(`example_keys`).
They depend on the global position in the batch, not on the device holding it, so a run is the
same on any device count, and the step is in the checkpoint, so a resumed run draws the same
parameters for the same batch.
"""

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L") and torchvision use.
# Separates these keys from the network initialisation's `key(seed)`.
_DOMAIN = 0xA06_0DE5
_VIEWS = ("view_a", "view_b")
# Slots of the per-example decision draw; the host's `augment.APPLIED_KEYS` less "flip".
APPLIED_KEYS = ("jitter", "channel_permute", "grayscale", "blur", "solarize")
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_BLUR_PASSES = 3  # PIL's ImagingGaussianBlur: three box blurs per direction.


# ---------------------------------------------------------------------------------------------
# Config checks.


def _view_settings(view: ml_collections.ConfigDict, name: str) -> dict:
  """The view's settings as Python numbers; ValueError naming the key when one is out of range."""
  out = {}
  for key in ("jitter_prob", "channel_permute_prob", "grayscale_prob", "blur_prob"):
    out[key] = float(view[key])
  out["solarize_prob"] = float(view.solarize_prob)
  for key, value in out.items():
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"config.augment.{name}.{key} must be a probability in [0, 1], got {value}.")
  for key in ("brightness", "contrast", "saturation", "noise_std"):
    out[key] = float(view[key])
    if out[key] < 0:
      raise ValueError(f"config.augment.{name}.{key} must be >= 0, got {out[key]}.")
  out["hue"] = float(view.hue)
  if not 0.0 <= out["hue"] <= 0.5:
    raise ValueError(
      f"config.augment.{name}.hue must be in [0, 0.5] (a fraction of a full turn), "
      f"got {out['hue']}."
    )
  lo, hi = (float(s) for s in view.blur_sigma)
  if not 0 < lo <= hi:
    raise ValueError(f"config.augment.{name}.blur_sigma must satisfy 0 < min <= max, got {lo, hi}.")
  out["blur_sigma"] = (lo, hi)
  out["solarize_threshold"] = float(view.solarize_threshold)
  return out


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config.augment` for the device path (mean / std always, the views if on_device).

  Raises:
    ValueError: naming the config key and the accepted range.
  """
  mean, std = tuple(config.augment.mean), tuple(config.augment.std)
  if len(mean) != 3 or len(std) != 3:
    raise ValueError(f"config.augment.mean and std need 3 values (RGB), got {mean} and {std}.")
  if min(std) <= 0:
    raise ValueError(f"config.augment.std must be > 0 per channel, got {std}.")
  if config.augment.on_device:
    for name in _VIEWS:
      _view_settings(config.augment[name], name)


# ---------------------------------------------------------------------------------------------
# Ops on one float32 image [H, W, 3] in [0, 1] (vmapped over the batch).


def to_grayscale(image: jax.Array) -> jax.Array:
  """ITU-R 601-2 luma replicated to 3 channels."""
  gray = jnp.tensordot(image, jnp.asarray(LUMA, image.dtype), axes=([-1], [0]))[..., None]
  return jnp.broadcast_to(gray, image.shape)


def _blend(a, b, factor):
  """torchvision `_blend`: factor * a + (1 - factor) * b, clipped to [0, 1]."""
  return jnp.clip(factor * a + (1.0 - factor) * b, 0.0, 1.0)


def adjust_brightness(image, factor):
  return _blend(image, 0.0, factor)


def adjust_contrast(image, factor):
  return _blend(image, jnp.mean(to_grayscale(image)[..., 0]), factor)


def adjust_saturation(image, factor):
  return _blend(image, to_grayscale(image), factor)


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


# ---------------------------------------------------------------------------------------------
# Per-example parameters and the view transform.


def example_keys(seed: int, step, batch_size: int, view: int) -> jax.Array:
  """The keys [batch_size] of one view of each example of the global batch at `step`."""
  base = jax.random.fold_in(jax.random.key(int(seed)), _DOMAIN)
  base = jax.random.fold_in(base, jnp.asarray(step, jnp.uint32))
  indices = jnp.arange(batch_size, dtype=jnp.uint32)
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(base, i), view))(indices)


def sample_params(key: jax.Array, view: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """One example's random parameters (vmap over keys for a batch).

  Returns:
    {"applied": bool [5] (`APPLIED_KEYS`), "order": int32 [4] (indices into `JITTER_OPS`,
     applied first to last), "factors": float32 [4] (brightness, contrast, saturation factors
     ~ U(max(0, 1 - s), 1 + s), hue delta ~ U(-hue, hue)), "permutation": int32 [3],
     "sigma": float32 scalar ~ U(blur_sigma), "noise_key": key}.
  """
  s = _view_settings(view, "view")
  k_apply, k_order, k_factor, k_perm, k_sigma, k_noise = jax.random.split(key, 6)
  probs = jnp.asarray([s[f"{name}_prob"] for name in APPLIED_KEYS], jnp.float32)
  u = jax.random.uniform(k_factor, (4,))
  lows = [max(0.0, 1.0 - s[name]) for name in JITTER_OPS[:3]] + [-s["hue"]]
  highs = [1.0 + s[name] for name in JITTER_OPS[:3]] + [s["hue"]]
  lo_a, hi_a = jnp.asarray(lows, jnp.float32), jnp.asarray(highs, jnp.float32)
  lo, hi = s["blur_sigma"]
  return {
    "applied": jax.random.uniform(k_apply, (len(APPLIED_KEYS),)) < probs,
    "order": jax.random.permutation(k_order, 4).astype(jnp.int32),
    "factors": lo_a + (hi_a - lo_a) * u,
    "permutation": jax.random.permutation(k_perm, 3).astype(jnp.int32),
    "sigma": jax.random.uniform(k_sigma, (), minval=lo, maxval=hi),
    "noise_key": k_noise,
  }


def color_jitter(image, order, factors, *, strengths: Sequence[float]):
  """The four jitter ops in `order` with `factors` (see `sample_params`); ops of strength 0 skip.

  Under vmap a switch runs every branch, so each position blends once (brightness, contrast and
  saturation are one blend against black / the mean gray level / the grayscale image) and
  computes the hue shift, and keeps the one the order names.
  """
  enabled_ops = jnp.asarray([float(v) > 0 for v in strengths])
  hue = float(strengths[3]) > 0

  def position(index, image):  # A rolled loop: the body compiles once, not four times.
    op = order[index]
    gray = to_grayscale(image)
    target = jnp.where(op == 1, jnp.mean(gray[..., 0]), jnp.where(op == 2, gray, 0.0))
    out = _blend(image, target, factors[jnp.minimum(op, 2)])
    if hue:
      out = jnp.where(op == 3, adjust_hue(image, factors[3]), out)
    return jnp.where(enabled_ops[op], out, image)

  return jax.lax.fori_loop(0, 4, position, image)


def augment_image(image: jax.Array, params: Mapping[str, jax.Array], view) -> jax.Array:
  """Steps 1-6 of the module doc on one cropped view with given parameters (`sample_params`).

  Args:
    image: float32 [S, S, 3] in [0, 1].
    params: one example's parameters.
    view: `config.augment.view_a` / `view_b`.

  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  s = _view_settings(view, "view")
  applied = dict(zip(APPLIED_KEYS, params["applied"]))
  if s["jitter_prob"] > 0:
    strengths = [s[name] for name in JITTER_OPS]
    jittered = color_jitter(image, params["order"], params["factors"], strengths=strengths)
    image = jnp.where(applied["jitter"], jittered, image)
  if s["channel_permute_prob"] > 0:
    permuted = jnp.take(image, params["permutation"], axis=-1)
    image = jnp.where(applied["channel_permute"], permuted, image)
  if s["grayscale_prob"] > 0:
    image = jnp.where(applied["grayscale"], to_grayscale(image), image)
  if s["blur_prob"] > 0:
    radius = blur_radius(s["blur_sigma"][1])
    blurred = gaussian_blur(image, params["sigma"], radius=radius)
    image = jnp.where(applied["blur"], blurred, image)
  if s["solarize_prob"] > 0:
    image = jnp.where(applied["solarize"], solarize(image, s["solarize_threshold"]), image)
  if s["noise_std"] > 0:
    noise = s["noise_std"] * jax.random.normal(params["noise_key"], image.shape)
    image = jnp.clip(image + noise, 0.0, 1.0)
  return image


def augment_views(pixels: jax.Array, keys: jax.Array, view) -> jax.Array:
  """`augment_image` over a batch: pixels [B, S, S, 3] uint8 (or float in [0, 1]), keys [B].

  Returns:
    float32 [B, S, S, 3] in [0, 1], not normalised.
  """
  params = jax.vmap(lambda k: sample_params(k, view))(keys)
  return jax.vmap(lambda x, p: augment_image(x, p, view))(to_unit(pixels), params)


def augment_batch(
  batch: Mapping[str, jax.Array], step, *, config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
  """Both views of a global batch through the device colour augmentations, then normalised.

  Jittable alone (`jax.jit(functools.partial(augment_batch, config=config))`), which is how the
  step benchmark times it and reads its FLOPs.

  Args:
    batch: {"view_a", "view_b"}: [B, S, S, 3] uint8 crops (or float pixels in [0, 1]), B the
      global batch.
    step: int scalar, the training step (the updates done before this batch).
    config: the run config (`config.seed`, `config.augment`).

  Returns:
    {"view_a", "view_b"}: float32 [B, S, S, 3], normalised by `config.augment.mean` / `std`.
  """
  validate_config(config)
  out = {}
  for index, name in enumerate(_VIEWS):
    pixels = batch[name]
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
      raise ValueError(f"batch[{name!r}] must be [B, S, S, 3] pixels, got shape {pixels.shape}.")
    keys = example_keys(int(config.seed), step, pixels.shape[0], index)
    augmented = augment_views(pixels, keys, config.augment[name])
    out[name] = normalize(augmented, config.augment.mean, config.augment.std)
  return out


def prepare_views(batch: Mapping[str, jax.Array], step, *, config) -> tuple[jax.Array, jax.Array]:
  """The network's two inputs from a pretraining batch, inside the train step.

  - `config.augment.on_device`: uint8 crops -> `augment_batch` (colour ops, then normalised).
  - otherwise: uint8 views are normalised ((x / 255 - mean) / std); float views are taken as
    already normalised by the host (the float path of older pipelines), unchanged.

  Raises:
    ValueError: on_device with float views (the host already normalised them: set the input
      pipeline to send uint8 crops) or views that are not [B, S, S, 3].
  """
  views = [batch[name] for name in _VIEWS]
  if config.augment.on_device:
    for name, view in zip(_VIEWS, views):
      if view.dtype != jnp.uint8:
        raise ValueError(
          f"config.augment.on_device=True needs the host's un-normalised uint8 crops, but "
          f"batch[{name!r}] is {view.dtype}: the input pipeline must send uint8 [B, S, S, 3] "
          "views (it does when config.augment.on_device is set), or set on_device=False."
        )
    out = augment_batch(batch, step, config=config)
    return out["view_a"], out["view_b"]
  mean, std = config.augment.mean, config.augment.std
  return tuple(normalize(to_unit(v), mean, std) if v.dtype == jnp.uint8 else v for v in views)
