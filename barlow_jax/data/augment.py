"""The Barlow Twins / BYOL image augmentations as pure TensorFlow functions of (image, seed).

Every op is stateless: randomness comes only from a `seed` tensor of shape [2] (int32 or int64),
so the same (image, seed) always gives the same output, eagerly or inside `tf.data`. The input
pipeline derives one seed per (global seed, epoch, example index, view) with `example_seed`,
which makes a run reproducible and resumable at any step.

Pixels are float32 in [0, 1] from the crop's resize to the end of `augment_cropped`; the input
pipeline then rounds them to uint8 (`crop.to_uint8`: PIL's pixels are 8-bit after every op too), and
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

The ops live in `barlow_jax.data.crop` (decoding, crop windows, PIL-like resizes) and
`barlow_jax.data.colour` (jitter, grayscale, PIL's Gaussian blur, solarize, normalisation); this
module composes them into a view and owns the seeds.
"""

import dataclasses

import tensorflow as tf

from barlow_jax.data.colour import (
  blur_radius,
  color_jitter,
  flip_left_right,
  gaussian_blur,
  normalize,
  permute_channels,
  solarize,
  to_grayscale,
)
from barlow_jax.data.crop import (
  check_resize_method,
  decode_and_random_resized_crop,
  random_resized_crop,
)

# Sub-seed slots of one view's seed (stateless_split of the view seed).
_CROP, _DECIDE, _FLIP, _JITTER, _PERMUTE, _BLUR, _NOISE = range(7)
_NUM_SUBSEEDS = 7
APPLIED_KEYS = ("flip", "jitter", "channel_permute", "grayscale", "blur", "solarize")


@dataclasses.dataclass(frozen=True)
class ViewParams:
  """One view's augmentation settings as plain values: the keys of `config.augment.view_a` /
  `view_b` (`barlow_jax.config.view_config`, where each is described). Every function here
  that takes a `view` takes this or the view's ConfigDict; the pretraining pipeline reads the
  config once into these (`barlow_jax.data.pretrain.two_views_of`)."""

  crop_area: tuple[float, float]
  crop_aspect: tuple[float, float]
  crop_method: str
  flip_prob: float
  jitter_prob: float
  brightness: float
  contrast: float
  saturation: float
  hue: float
  grayscale_prob: float
  blur_prob: float
  blur_sigma: tuple[float, float]
  solarize_prob: float
  solarize_threshold: float
  channel_permute_prob: float
  noise_std: float


VIEW_KEYS = tuple(field.name for field in dataclasses.fields(ViewParams))


def example_seed(global_seed, epoch, index, view) -> tf.Tensor:
  """The seed [2] int64 of one view of one example in one epoch; all arguments are int scalars."""
  key = tf.stack([tf.cast(global_seed, tf.int64), tf.constant(0x5EED, tf.int64)])
  for data in (epoch, index, view):
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))
  return key


def _subseeds(seed) -> tf.Tensor:
  return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=_NUM_SUBSEEDS)


def _check_prob(view, key):
  p = float(getattr(view, key))
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
