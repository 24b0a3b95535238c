"""Decoding, random resized crops and PIL-like resizes (TensorFlow, stateless).

Pixels as the reference's PIL pipeline makes them (torchvision transforms on PIL images):
  - Every resize antialiases when it downscales, as PIL's do (`resize_image`: the resample
    kernel widened by the scale factor; without it a 400 px image resized to 224 aliases, e.g.
    a 2.2 px grating keeps 25x PIL's contrast). The crop resize is
    `crop_method` (bicubic, the reference's RandomResizedCrop); the evaluation resize is
    `config.dataset.eval_interpolation` (bilinear, the default of torchvision's `Resize(256)`),
    with torchvision's output size (short side = resize, long side truncated) and centre crop.
  - The crop window has torchvision `RandomResizedCrop.get_params` semantics (10 attempts, then
    a centre crop); randomness comes only from a [2] `seed` tensor.
"""

import math
from collections.abc import Sequence

import tensorflow as tf

from barlow_jax.data import pil_formats, resample

NUM_CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop tries 10 boxes before the fallback.


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
  """PIL-like resize of [..., H, W, 3] pixels to `size` ([h, w]): float32 in [0, 1].

  `image` is uint8 (resized as is, no float copy first) or any dtype `to_float` takes.
  Antialiased (the kernel widens by the downscale factor, as PIL's resample filters do; a no-op
  when upscaling), through `resample.resize`. Bicubic overshoots, hence the clip.
  """
  method = check_resize_method(method, "resize method")
  image = tf.convert_to_tensor(image)
  unit = 1.0 / 255.0 if image.dtype == tf.uint8 else 1.0
  if image.dtype not in (tf.uint8, tf.float32):
    image = to_float(image)
  in_hw = tf.shape(image)[-3:-1]
  # Antialiasing only widens the kernel of a downscaled axis: an upscale gives the same pixels
  # through the non-antialiased kernel, measured faster on one core (0.35 against 0.65 ms for a
  # 180 x 170 crop to 224 through `resample.resize`).
  out = tf.cond(
    tf.reduce_all(in_hw <= tf.convert_to_tensor(size, tf.int32)),
    lambda: tf.image.resize(image, size, method=method),
    lambda: resample.resize(image, size, method),
  )
  if unit != 1.0:
    out = out * unit
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
  return _resize(image[y : y + h, x : x + w], size, method)


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
  return _resize(crop, size, method)


def decode_image_uint8(image_bytes: tf.Tensor) -> tf.Tensor:
  """Any image file TensorFlow or Pillow decodes -> uint8 [H, W, 3], as PIL's convert("RGB").

  The one decoder of non-JPEG training images and of the folder check. JPEG, PNG, GIF, WebP and
  24 / 32-bit BMPs through TensorFlow (WebP decodes only to uint8); every other file (TIFF, PPM,
  PGM, 1 / 4 / 8-bit or RLE BMPs, ...) through Pillow (`pil_formats`). Grayscale is replicated to
  RGB, alpha dropped, 16-bit PNGs rounded to 8 bits (as PIL's convert("RGB")), an animated GIF
  or a multi-page TIFF gives its first frame.
  """

  def tensorflow():
    return tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)

  image = tf.cond(
    pil_formats.tensorflow_decodes(image_bytes),
    tensorflow,
    lambda: pil_formats.pil_decode(image_bytes),
  )
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
  """Any image file `decode_image_uint8` reads -> float32 [H, W, 3] in [0, 1].

  As `decode_image_uint8`, except that 16-bit PNGs keep their precision (scaled by 65535).
  """
  is_png = tf.equal(tf.strings.substr(image_bytes, 0, 4), b"\x89PNG")

  def png():
    return to_float(tf.io.decode_png(image_bytes, channels=3, dtype=tf.uint16))

  image = tf.cond(is_png, png, lambda: to_float(decode_image_uint8(image_bytes)))
  image.set_shape([None, None, 3])
  return image


def eval_resize_crop(
  image: tf.Tensor, *, size: int, resize: int | None, method: str = "bilinear"
) -> tf.Tensor:
  """Evaluation preprocessing: [H, W, 3] uint8 or float in [0, 1] -> float32 [size, size, 3].

  With `resize`, torchvision's `Resize(resize)` then `CenterCrop(size)` (ImageNet: 256 then 224):
  the short side becomes `resize`, the long side int(resize * long / short) (truncated, as
  torchvision), then the centre crop at offsets round((side - size) / 2) (half to even, as
  Python's round). Without, the image is resized straight to size x size (a no-op for images
  already that size). Either resize scales up or down, whatever the image's size (static, as
  arrays in memory have, or known only per image, as decoded files). Resizes antialias like
  PIL's (`resize_image`'s pixels); `method` is `config.dataset.eval_interpolation` (the
  reference's bilinear by default). Only the crop's window of the resize is computed
  (`resample.resize_window`): memory stays bounded by the output whatever the aspect ratio.

  Raises:
    ValueError: for a `size` or `resize` below 1, `resize < size` (the crop would not fit), or an
      unknown `method`.
  """
  image = to_float(image)
  check_resize_method(method, "config.dataset.eval_interpolation")
  if size < 1 or (resize is not None and resize < 1):
    raise ValueError(f"eval crop size ({size}) and resize ({resize}) must be >= 1.")
  if resize is not None and resize < size:
    raise ValueError(f"eval resize ({resize}) must be >= the crop size ({size}).")
  shape = tf.shape(image)
  if resize is None:
    new_hw = tf.constant([size, size])
  else:
    h, w = shape[0], shape[1]
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = (resize * long) // short  # int(resize * long / short) in exact integers.
    new_hw = tf.where(h <= w, tf.stack([resize, new_long]), tf.stack([new_long, resize]))
  offsets = tf.cast(tf.round(tf.cast(new_hw - size, tf.float32) / 2.0), tf.int32)
  oy, ox = offsets[0], offsets[1]

  def window():
    # Only the crop's pixels of the resize: memory bounded by the output, not by the resized
    # image (whole, a 1 x 1000 strip's 256 x 256000 resize grew peak RSS by 0.8 GB;
    # docs/benchmarks.md).
    out = resample.resize_window(image, new_hw, offsets, [size, size], method)
    return tf.clip_by_value(out, 0.0, 1.0)  # Bicubic overshoots.

  # torchvision returns the image itself when it already has the output size.
  same = tf.reduce_all(new_hw == shape[:2])
  out = tf.cond(same, lambda: image[oy : oy + size, ox : ox + size], window)
  return tf.ensure_shape(out, [size, size, 3])
