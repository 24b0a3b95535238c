"""Which image files TensorFlow decodes as Pillow does, and Pillow's decode for the others.

The reference reads its images with torchvision's `ImageFolder`: Pillow, then
`convert("RGB")`, for the extensions .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp. TensorFlow's
decoders read JPEG, PNG, GIF and WebP, and only some BMPs: `tf.io.decode_bmp` takes the channel
count from the bits per pixel, so it reads an 8-bit BMP as gray levels without its palette, refuses
1- and 4-bit ones, and ignores the compression field (RLE) and the OS/2 header. Every other file
(TIFF, PPM / PGM / PBM, those BMPs, and whatever else Pillow opens) goes through Pillow here,
inside the tf.data graph (`tf.numpy_function`): the pixels of `Image.open(f).convert("RGB")`.
Pillow is a dependency of the package (setup.py).
"""

import io

import numpy as np
import tensorflow as tf

_HEAD = 40  # Bytes of a file's start the format checks read.


def _head(image_bytes: tf.Tensor) -> tf.Tensor:
  """uint8 [_HEAD]: the first bytes of the file, zero-padded (0-byte files included)."""
  start = tf.strings.substr(image_bytes, 0, _HEAD)  # Shorter when the file is.
  padded = tf.strings.substr(tf.strings.join([start, b"\0" * _HEAD]), 0, _HEAD)
  return tf.io.decode_raw(padded, tf.uint8, fixed_length=_HEAD)


def _uint_le(head: tf.Tensor, offset: int, size: int) -> tf.Tensor:
  value = tf.zeros([], tf.int64)
  for i in reversed(range(size)):
    value = value * 256 + tf.cast(head[offset + i], tf.int64)
  return value


def tensorflow_decodes(image_bytes: tf.Tensor) -> tf.Tensor:
  """bool scalar: whether `tf.io.decode_image` gives Pillow's convert("RGB") pixels of the file.

  JPEG, PNG, GIF, WebP, and BMPs with a Windows header (40 bytes or more) of 24 or 32 bits per
  pixel, uncompressed (BI_RGB). Everything else is for `pil_decode`.
  """
  head = _head(image_bytes)

  def starts(signature: bytes, offset: int = 0) -> tf.Tensor:
    expected = tf.constant(list(signature), tf.uint8)
    return tf.reduce_all(head[offset : offset + len(signature)] == expected)

  bmp = (
    starts(b"BM")
    & (_uint_le(head, 14, 4) >= 40)  # BITMAPINFOHEADER or later (not OS/2's 12 bytes).
    & ((_uint_le(head, 28, 2) == 24) | (_uint_le(head, 28, 2) == 32))
    & (_uint_le(head, 30, 4) == 0)  # BI_RGB.
  )
  return (
    tf.io.is_jpeg(image_bytes)
    | starts(b"\x89PNG")
    | starts(b"GIF8")
    | (starts(b"RIFF") & starts(b"WEBP", 8))
    | bmp
  )


def _pil_rgb(data) -> np.ndarray:
  """Pillow's RGB pixels, or [0, 0, 3] for a file Pillow does not read."""
  from PIL import Image

  data = data.item() if isinstance(data, np.ndarray) else data  # A 0-d object array in graphs.
  try:
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(image.convert("RGB"), np.uint8)
  except (OSError, ValueError, SyntaxError):  # Pillow's errors for unreadable files.
    # Failing here would print a Python traceback per file (the folder check meets every
    # non-image file of a folder); the assert below fails the element with one line instead.
    return np.zeros((0, 0, 3), np.uint8)


def pil_decode(image_bytes: tf.Tensor) -> tf.Tensor:
  """Encoded bytes -> uint8 [H, W, 3]: Pillow's `Image.open(...).convert("RGB")` (first frame).

  Runs in Python (`tf.numpy_function`, holding the GIL): meant for the formats TensorFlow does not
  decode (`tensorflow_decodes` false).

  Raises:
    InvalidArgumentError: (when run) for a file Pillow cannot read, as TensorFlow's decoders do,
      so `ignore_errors` drops it.
  """
  image = tf.numpy_function(_pil_rgb, [image_bytes], tf.uint8, stateful=False)
  image.set_shape([None, None, 3])
  check = tf.debugging.Assert(
    tf.size(image) > 0, ["not an image file that TensorFlow or Pillow decodes"]
  )
  with tf.control_dependencies([check]):
    return tf.identity(image)
