"""The Barlow Twins / BYOL image augmentations as pure TensorFlow functions of (image, seed).

Every op is stateless: randomness comes only from a `seed` tensor of shape [2] (int32 or int64),
so the same (image, seed) always gives the same output, eagerly or inside `tf.data`. The input
pipeline derives one seed per (global seed, epoch, example index, view) with `example_seed`,
which makes a run reproducible and resumable at any step.

Pixels are float32 in [0, 1] from the crop's resize to the end of `augment_cropped`; the input
pipeline then rounds them to uint8 (`to_uint8`: PIL's pixels are 8-bit after every op too), and
the train step maps them to the network's input with the configured mean and std
(`normalize`; Barlow Twins reference main.py, torchvision `Normalize`).

Per view, in this order (`augment_view`):
  1. random resized crop to S x S (torchvision semantics, 10 attempts then a centre crop),
  2. horizontal flip with `flip_prob`,
  3. colour jitter with `jitter_prob`: brightness, contrast, saturation and hue in a random order
     (torchvision `ColorJitter` semantics, clipped to [0, 1] after each),
  4. random RGB channel permutation with `channel_permute_prob` (an extra op, off by default),
  5. grayscale (ITU-R 601-2 luma, replicated to 3 channels) with `grayscale_prob`,
  6. Gaussian blur with `blur_prob`, sigma ~ U(blur_sigma),
  7. solarize (x -> 1 - x where x >= `solarize_threshold`) with `solarize_prob`,
  8. additive Gaussian noise of std `noise_std` (an extra op, 0 by default), clipped to [0, 1],
  9. normalisation by `mean` / `std`.

Pixels as the reference's PIL pipeline makes them (torchvision transforms on PIL images):
  - Every resize antialiases when it downscales, as PIL's do (`resize_image`: the resample
    kernel widened by the scale factor; without it a 400 px image resized to 224 aliases, e.g.
    a 2.2 px grating keeps 25x PIL's contrast). The crop resize is
    `crop_method` (bicubic, the reference's RandomResizedCrop); the evaluation resize is
    `config.dataset.eval_interpolation` (bilinear, the default of torchvision's `Resize(256)`),
    with torchvision's output size (short side = resize, long side truncated) and centre crop.
  - The blur is PIL's `GaussianBlur(radius=sigma)`: three extended box filters per direction
    composed into one kernel of variance sigma^2 (`barlow_jax.blur`), edge pixels extended.
"""

import math
from collections.abc import Sequence

import tensorflow as tf

from barlow_jax import blur as blur_lib

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L") and torchvision use.
NUM_CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop tries 10 boxes before the fallback.

# Sub-seed slots of one view's seed (stateless_split of the view seed).
_CROP, _DECIDE, _FLIP, _JITTER, _PERMUTE, _BLUR, _NOISE = range(7)
_NUM_SUBSEEDS = 7
APPLIED_KEYS = ("flip", "jitter", "channel_permute", "grayscale", "blur", "solarize")


def example_seed(global_seed, epoch, index, view) -> tf.Tensor:
  """The seed [2] int64 of one view of one example in one epoch; all arguments are int scalars."""
  key = tf.stack([tf.cast(global_seed, tf.int64), tf.constant(0x5EED, tf.int64)])
  for data in (epoch, index, view):
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))
  return key


def _subseeds(seed) -> tf.Tensor:
  return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=_NUM_SUBSEEDS)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """float [0, 1] -> uint8, rounded (PIL's pixels are 8-bit after every op too)."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)


def to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 / uint16 / float image -> float32 in [0, 1] (integers are scaled by their max)."""
  image = tf.convert_to_tensor(image)
  if image.dtype.is_integer:
    return tf.image.convert_image_dtype(image, tf.float32)
  return tf.cast(image, tf.float32)


# ---------------------------------------------------------------------------------------------
# Random resized crop.


def crop_window(height, width, seed, *, area: Sequence[float], aspect: Sequence[float]):
  """A random box with torchvision `RandomResizedCrop.get_params` semantics.

  Ten candidate boxes with area fraction ~ U(area) and log aspect (w / h) ~ U(log aspect); the
  first that fits is used at a uniform position; if none fits, the largest centred box whose
  aspect is clamped into the range.

  Args:
    height, width: image size in pixels (int scalars).
    seed: [2] int seed.
    area, aspect: (min, max) ranges.

  Returns:
    int32 [4]: (offset_y, offset_x, crop_height, crop_width).
  """
  if not 0 < area[0] <= area[1] <= 1:
    raise ValueError(f"crop_area must satisfy 0 < min <= max <= 1, got {tuple(area)}.")
  if not 0 < aspect[0] <= aspect[1]:
    raise ValueError(f"crop_aspect must satisfy 0 < min <= max, got {tuple(aspect)}.")
  h_i = tf.cast(height, tf.int32)
  w_i = tf.cast(width, tf.int32)
  h_f, w_f = tf.cast(h_i, tf.float32), tf.cast(w_i, tf.float32)
  u = tf.random.stateless_uniform([4, NUM_CROP_ATTEMPTS], seed=seed)
  target_area = h_f * w_f * (area[0] + (area[1] - area[0]) * u[0])
  log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
  ratio = tf.exp(log_lo + (log_hi - log_lo) * u[1])
  cw = tf.cast(tf.round(tf.sqrt(target_area * ratio)), tf.int32)
  ch = tf.cast(tf.round(tf.sqrt(target_area / ratio)), tf.int32)
  fits = (cw > 0) & (cw <= w_i) & (ch > 0) & (ch <= h_i)
  # Uniform integer offsets in [0, size - crop]; clipped against float rounding at u -> 1.
  oy = tf.minimum(tf.cast(u[2] * tf.cast(h_i - ch + 1, tf.float32), tf.int32), h_i - ch)
  ox = tf.minimum(tf.cast(u[3] * tf.cast(w_i - cw + 1, tf.float32), tf.int32), w_i - cw)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

  in_ratio = w_f / h_f
  fb_w = tf.where(
    in_ratio < aspect[0],
    w_i,
    tf.where(in_ratio > aspect[1], tf.cast(tf.round(h_f * aspect[1]), tf.int32), w_i),
  )
  fb_h = tf.where(
    in_ratio < aspect[0],
    tf.cast(tf.round(w_f / aspect[0]), tf.int32),
    h_i,
  )
  fb_w = tf.clip_by_value(fb_w, 1, w_i)
  fb_h = tf.clip_by_value(fb_h, 1, h_i)
  fallback = tf.stack([(h_i - fb_h) // 2, (w_i - fb_w) // 2, fb_h, fb_w])
  chosen = tf.stack([oy[first], ox[first], ch[first], cw[first]])
  return tf.where(tf.reduce_any(fits), chosen, fallback)


RESIZE_METHODS = ("bilinear", "bicubic")  # PIL's BILINEAR / BICUBIC, antialiased like PIL's.


def check_resize_method(method: str, key: str) -> str:
  """`method` if it is one of `RESIZE_METHODS`, else a ValueError naming the config `key`."""
  if method not in RESIZE_METHODS:
    raise ValueError(f"{key}={method!r}: use one of {RESIZE_METHODS}.")
  return method


def resize_image(image: tf.Tensor, size, method: str) -> tf.Tensor:
  """PIL-like resize of float32 [..., H, W, 3] in [0, 1] to `size` ([h, w]), clipped to [0, 1].

  Antialiased (the kernel widens by the downscale factor, as PIL's resample filters do; a no-op
  when upscaling). Bicubic overshoots, hence the clip.
  """
  method = check_resize_method(method, "resize method")
  in_hw = tf.shape(image)[-3:-1]
  # Antialiasing only widens the kernel of a downscaled axis: an upscale gives the same pixels
  # through the non-antialiased kernel, measured 3x faster on one core (0.7 vs 2.3 ms at 224).
  out = tf.cond(
    tf.reduce_all(in_hw <= tf.convert_to_tensor(size, tf.int32)),
    lambda: tf.image.resize(image, size, method=method),
    lambda: tf.image.resize(image, size, method=method, antialias=True),
  )
  return tf.clip_by_value(out, 0.0, 1.0)


def _resize(image: tf.Tensor, size: int, method: str) -> tf.Tensor:
  return resize_image(image, [size, size], method)


def random_resized_crop(
  image: tf.Tensor,
  seed,
  *,
  size: int,
  area: Sequence[float] = (0.08, 1.0),
  aspect: Sequence[float] = (3 / 4, 4 / 3),
  method: str = "bicubic",
) -> tf.Tensor:
  """Crops a random box (`crop_window`) of a decoded image and resizes it to [size, size, 3].

  Args:
    image: [H, W, 3] uint8 or float in [0, 1].
    seed: [2] int seed.

  Returns:
    float32 [size, size, 3] in [0, 1].
  """
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  y, x, h, w = tf.unstack(crop_window(shape[0], shape[1], seed, area=area, aspect=aspect))
  crop = to_float(image[y : y + h, x : x + w])
  return _resize(crop, size, method)


def decode_and_random_resized_crop(
  image_bytes: tf.Tensor,
  seed,
  *,
  size: int,
  area: Sequence[float] = (0.08, 1.0),
  aspect: Sequence[float] = (3 / 4, 4 / 3),
  method: str = "bicubic",
) -> tf.Tensor:
  """`random_resized_crop` fused with JPEG decoding: only the crop window is decoded.

  Args:
    image_bytes: scalar string, a JPEG file.

  Returns:
    float32 [size, size, 3] in [0, 1].
  """
  shape = tf.io.extract_jpeg_shape(image_bytes)
  window = crop_window(shape[0], shape[1], seed, area=area, aspect=aspect)
  crop = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
  return _resize(to_float(crop), size, method)


def decode_image_uint8(image_bytes: tf.Tensor) -> tf.Tensor:
  """Any format TensorFlow decodes (JPEG, PNG, GIF, BMP, WebP) -> uint8 [H, W, 3].

  The one decoder of non-JPEG training images and of the folder check (WebP decodes only to
  uint8). Grayscale is replicated to RGB, alpha dropped, 16-bit PNGs rounded to 8 bits (as PIL's
  convert("RGB")), an animated GIF gives its first frame.
  """
  image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def decode_whole(image_bytes: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] through the decoders training uses: what this decodes, training decodes.

  JPEGs through libjpeg's crop decoder (the fused crop's, here over the whole image), every
  other format through `decode_image_uint8`. The folder start-up check runs this on every file.
  """

  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)
    window = tf.stack([0, 0, shape[0], shape[1]])
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, lambda: decode_image_uint8(image_bytes))
  image.set_shape([None, None, 3])
  return image


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
  """Any JPEG / PNG / GIF / BMP / WebP bytes -> float32 [H, W, 3] in [0, 1].

  As `decode_image_uint8`, except that 16-bit PNGs keep their precision (scaled by 65535).
  """
  is_png = tf.equal(tf.strings.substr(image_bytes, 0, 4), b"\x89PNG")

  def png():
    return to_float(tf.io.decode_png(image_bytes, channels=3, dtype=tf.uint16))

  image = tf.cond(is_png, png, lambda: to_float(decode_image_uint8(image_bytes)))
  image.set_shape([None, None, 3])
  return image


# ---------------------------------------------------------------------------------------------
# Photometric ops, on float32 [..., H, W, 3] in [0, 1].


def flip_left_right(image: tf.Tensor) -> tf.Tensor:
  return tf.reverse(image, axis=[-2])


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """ITU-R 601-2 luma replicated to 3 channels."""
  image = tf.convert_to_tensor(image)
  # One matmul with the luma in every column: 8x faster on one core than a weighted sum
  # followed by a tile (measured: 0.12 against 1.0 ms for a 224^2 image).
  luma = tf.constant([[c] * 3 for c in LUMA], image.dtype)
  return tf.reshape(tf.matmul(tf.reshape(image, [-1, 3]), luma), tf.shape(image))


def _blend(a: tf.Tensor, b: tf.Tensor, factor) -> tf.Tensor:
  """torchvision `_blend`: factor * a + (1 - factor) * b, clipped to [0, 1]."""
  return tf.clip_by_value(factor * a + (1.0 - factor) * b, 0.0, 1.0)


def adjust_brightness(image, factor):
  return _blend(image, tf.zeros_like(image), factor)


def adjust_contrast(image, factor):
  # The mean luma is the luma of the mean colour (both linear): no grayscale image needed.
  channel_means = tf.reduce_mean(image, axis=[-3, -2], keepdims=True)
  mean = tf.reduce_sum(channel_means * tf.constant(LUMA, image.dtype), axis=-1, keepdims=True)
  return _blend(image, mean, factor)


def adjust_saturation(image, factor):
  return _blend(image, to_grayscale(image), factor)


def adjust_hue(image, delta):
  """Adds `delta` (a fraction of a full turn, in [-0.5, 0.5]) to the hue in HSV space."""
  return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def color_jitter(
  image: tf.Tensor,
  seed,
  *,
  brightness: float = 0.4,
  contrast: float = 0.4,
  saturation: float = 0.2,
  hue: float = 0.1,
) -> tf.Tensor:
  """torchvision `ColorJitter`: the four ops in a random order, each with a random strength.

  Factors: brightness, contrast, saturation ~ U(max(0, 1 - s), 1 + s) (multiply, or blend with
  black / the mean gray level / the grayscale image); hue delta ~ U(-hue, hue) of a full turn.
  An op whose strength is 0 is the identity and is skipped.

  Args:
    image: float32 [H, W, 3] in [0, 1].
    seed: [2] int seed.
  """
  if not 0 <= hue <= 0.5:
    raise ValueError(f"hue must be in [0, 0.5] (a fraction of a full turn), got {hue}.")
  for name, value in (
    ("brightness", brightness),
    ("contrast", contrast),
    ("saturation", saturation),
  ):
    if value < 0:
      raise ValueError(f"{name} must be >= 0, got {value}.")
  u = tf.random.stateless_uniform([8], seed=seed)
  order = tf.argsort(u[4:])

  def factor(strength, v):
    lo = max(0.0, 1.0 - strength)
    return lo + (1.0 + strength - lo) * v

  ops = [
    (brightness, lambda x: adjust_brightness(x, factor(brightness, u[0]))),
    (contrast, lambda x: adjust_contrast(x, factor(contrast, u[1]))),
    (saturation, lambda x: adjust_saturation(x, factor(saturation, u[2]))),
    (hue, lambda x: adjust_hue(x, hue * (2.0 * u[3] - 1.0))),
  ]
  branches = [op if strength > 0 else (lambda x: x) for strength, op in ops]
  if all(strength == 0 for strength, _ in ops):
    return image
  for position in range(4):
    image = tf.switch_case(order[position], [lambda fn=fn, x=image: fn(x) for fn in branches])
  return image


def blur_radius(sigma_max: float, size: int | None = None) -> int:
  """Half-width of the blur kernel: that of PIL's kernel at sigma_max (`blur.kernel_radius`).

  6 at the default sigma_max = 2. Edges are extended, so any image size works (`size` is unused,
  kept for callers of the earlier signature).
  """
  del size
  return blur_lib.kernel_radius(sigma_max)


def gaussian_blur(image: tf.Tensor, sigma, *, radius: int) -> tf.Tensor:
  """PIL's `GaussianBlur(radius=sigma)` (`barlow_jax.blur`): weights sum to 1, variance sigma^2.

  Args:
    image: float32 [H, W, 3], or [B, H, W, 3] with one sigma per image.
    sigma: scalar (or [B]) standard deviation in pixels (> 0).
    radius: static half-width of the kernel, >= `blur_radius(max sigma)`.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  if image.shape.rank == 3:
    return blur_lib.blur_image(image, sigma, radius)
  return blur_lib.blur_batch(image, blur_lib.pil_gaussian_kernel(sigma, radius))


def solarize(image: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
  """x -> 1 - x where x >= threshold (on [0, 1] pixels; 128/255 in the 8-bit convention)."""
  return tf.where(image >= threshold, 1.0 - image, image)


def permute_channels(image: tf.Tensor, seed) -> tf.Tensor:
  """A uniformly random order of the three channels (one of 6 permutations)."""
  order = tf.argsort(tf.random.stateless_uniform([3], seed=seed))
  return tf.gather(image, order, axis=-1)


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """(x - mean) / std per channel, on [0, 1] pixels."""
  mean_t = tf.constant(mean, tf.float32)
  std_t = tf.constant(std, tf.float32)
  return (image - mean_t) / std_t


# ---------------------------------------------------------------------------------------------
# One view.


def _check_prob(view, key):
  p = float(view[key])
  if not 0 <= p <= 1:
    raise ValueError(f"augment view key {key!r} must be a probability in [0, 1], got {p}.")
  return p


def _decisions(seeds, probs) -> dict:
  """{op: bool scalar}: whether each op of `APPLIED_KEYS` fires (one uniform draw per op)."""
  u = tf.random.stateless_uniform([len(APPLIED_KEYS)], seed=seeds[_DECIDE])
  return {key: u[i] < probs[key] for i, key in enumerate(APPLIED_KEYS) if key in probs}


def maybe_flip(image: tf.Tensor, seed, view) -> tf.Tensor:
  """Step 2 alone: the flip `augment_cropped` would make for this seed (the host part of a view
  whose colour ops run on the accelerator, `config.augment.on_device`)."""
  p = _check_prob(view, "flip_prob")
  flip = _decisions(_subseeds(seed), {"flip": p})["flip"]
  return tf.cond(flip, lambda: flip_left_right(image), lambda: image)


def augment_cropped(image: tf.Tensor, seed, view, *, return_applied: bool = False):
  """Steps 2-8 of the module doc on an already cropped view.

  Args:
    image: float32 [S, S, 3] in [0, 1].
    seed: the view's [2] int seed (the crop uses another sub-seed of the same seed).
    view: one view's config (`config.augment.view_a` / `view_b`).
    return_applied: also return which random ops fired.

  Returns:
    float32 [S, S, 3] in [0, 1]; with `return_applied`, also {name: bool scalar} for
    `APPLIED_KEYS`.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  seeds = _subseeds(seed)
  probs = {
    "flip": _check_prob(view, "flip_prob"),
    "jitter": _check_prob(view, "jitter_prob"),
    "channel_permute": _check_prob(view, "channel_permute_prob"),
    "grayscale": _check_prob(view, "grayscale_prob"),
    "blur": _check_prob(view, "blur_prob"),
    "solarize": _check_prob(view, "solarize_prob"),
  }
  applied = _decisions(seeds, probs)

  def maybe(key, fn, x):
    if probs[key] == 0.0:  # Static skip: no graph for an op that never fires.
      return x
    return tf.cond(applied[key], lambda: fn(x), lambda: x)

  image = maybe("flip", flip_left_right, image)
  image = maybe(
    "jitter",
    lambda x: color_jitter(
      x,
      seeds[_JITTER],
      brightness=float(view.brightness),
      contrast=float(view.contrast),
      saturation=float(view.saturation),
      hue=float(view.hue),
    ),
    image,
  )
  image = maybe("channel_permute", lambda x: permute_channels(x, seeds[_PERMUTE]), image)
  image = maybe("grayscale", to_grayscale, image)
  if probs["blur"] > 0:
    lo, hi = (float(s) for s in view.blur_sigma)
    if not 0 < lo <= hi:
      raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {(lo, hi)}.")
    radius = blur_radius(hi)
    sigma = lo + (hi - lo) * tf.random.stateless_uniform([], seed=seeds[_BLUR])
    image = maybe("blur", lambda x: gaussian_blur(x, sigma, radius=radius), image)
  threshold = float(view.solarize_threshold)
  image = maybe("solarize", lambda x: solarize(x, threshold), image)
  noise_std = float(view.noise_std)
  if noise_std < 0:
    raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
  if noise_std > 0:
    noise = tf.random.stateless_normal(tf.shape(image), seed=seeds[_NOISE], stddev=noise_std)
    image = tf.clip_by_value(image + noise, 0.0, 1.0)
  if return_applied:
    return image, applied
  return image


def crop_seed(seed) -> tf.Tensor:
  """The sub-seed of a view's seed that drives its random resized crop."""
  return _subseeds(seed)[_CROP]


def crop_view(image, seed, view, *, size: int, is_jpeg_bytes: bool = False) -> tf.Tensor:
  """Step 1: the random resized crop of one view, from a decoded image or from JPEG bytes."""
  kwargs = dict(
    size=size,
    area=tuple(float(a) for a in view.crop_area),
    aspect=tuple(float(a) for a in view.crop_aspect),
    method=check_resize_method(str(view.crop_method), "config.augment.view_*.crop_method"),
  )
  if is_jpeg_bytes:
    return decode_and_random_resized_crop(image, crop_seed(seed), **kwargs)
  return random_resized_crop(image, crop_seed(seed), **kwargs)


def augment_view(image, seed, view, *, size: int, mean, std, return_applied: bool = False):
  """One full view: crop, photometric ops, normalisation.

  Args:
    image: decoded [H, W, 3] uint8 or float in [0, 1].
    seed: [2] int seed of this view (`example_seed`).
    view: `config.augment.view_a` or `view_b`.
    size: output side S.
    mean, std: `config.augment.mean` / `std`.

  Returns:
    float32 [S, S, 3], normalised (and the applied dict with `return_applied`).
  """
  cropped = crop_view(image, seed, view, size=size)
  out = augment_cropped(cropped, seed, view, return_applied=return_applied)
  if return_applied:
    return normalize(out[0], mean, std), out[1]
  return normalize(out, mean, std)


def eval_resize_crop(
  image: tf.Tensor, *, size: int, resize: int | None, method: str = "bilinear"
) -> tf.Tensor:
  """Evaluation preprocessing: [H, W, 3] uint8 or float in [0, 1] -> float32 [size, size, 3].

  With `resize`, torchvision's `Resize(resize)` then `CenterCrop(size)` (ImageNet: 256 then 224):
  the short side becomes `resize`, the long side int(resize * long / short) (truncated, as
  torchvision), then the centre crop at offsets round((side - size) / 2) (half to even, as
  Python's round). Without, the image is resized straight to size x size (a no-op for images
  already that size). Resizes antialias like PIL's (`resize_image`); `method` is
  `config.dataset.eval_interpolation` (the reference's bilinear by default).
  """
  image = to_float(image)
  check_resize_method(method, "config.dataset.eval_interpolation")
  if resize is not None and resize < size:
    raise ValueError(f"eval resize ({resize}) must be >= the crop size ({size}).")
  shape = tf.shape(image)
  if resize is None:
    same = (shape[0] == size) & (shape[1] == size)
    return tf.cond(
      same,
      lambda: tf.ensure_shape(image, [size, size, 3]),
      lambda: resize_image(image, [size, size], method),
    )
  h, w = shape[0], shape[1]
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  new_long = (resize * long) // short  # int(resize * long / short) in exact integers.
  new_hw = tf.where(h <= w, tf.stack([resize, new_long]), tf.stack([new_long, resize]))
  same = tf.reduce_all(new_hw == shape[:2])  # torchvision returns the image itself.
  image = tf.cond(same, lambda: image, lambda: resize_image(image, new_hw, method))
  offsets = tf.cast(tf.round(tf.cast(new_hw - size, tf.float32) / 2.0), tf.int32)
  oy, ox = offsets[0], offsets[1]
  return tf.ensure_shape(image[oy : oy + size, ox : ox + size], [size, size, 3])
