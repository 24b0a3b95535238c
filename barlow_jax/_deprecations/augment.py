"""Deprecated import path of the host augmentations: now `barlow_jax.data.augment` (one view),
`barlow_jax.data.crop` (decoding, crops, resizes) and `barlow_jax.data.colour` (colour ops).

Every name here warns `DeprecationWarning` naming its new home and goes in barlow_jax 0.3
(`barlow_jax._deprecations`, CHANGELOG.md).
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {
  "adjust_brightness": "barlow_jax.data.colour.adjust_brightness",
  "adjust_contrast": "barlow_jax.data.colour.adjust_contrast",
  "adjust_hue": "barlow_jax.data.colour.adjust_hue",
  "adjust_saturation": "barlow_jax.data.colour.adjust_saturation",
  "APPLIED_KEYS": "barlow_jax.data.augment.APPLIED_KEYS",
  "augment_cropped": "barlow_jax.data.augment.augment_cropped",
  "augment_view": "barlow_jax.data.augment.augment_view",
  "blur_radius": "barlow_jax.data.colour.blur_radius",
  "check_resize_method": "barlow_jax.data.crop.check_resize_method",
  "color_jitter": "barlow_jax.data.colour.color_jitter",
  "crop_seed": "barlow_jax.data.augment.crop_seed",
  "crop_view": "barlow_jax.data.augment.crop_view",
  "crop_window": "barlow_jax.data.crop.crop_window",
  "decode_and_random_resized_crop": "barlow_jax.data.crop.decode_and_random_resized_crop",
  "decode_image": "barlow_jax.data.crop.decode_image",
  "decode_image_uint8": "barlow_jax.data.crop.decode_image_uint8",
  "decode_whole": "barlow_jax.data.crop.decode_whole",
  "eval_resize_crop": "barlow_jax.data.crop.eval_resize_crop",
  "example_seed": "barlow_jax.data.augment.example_seed",
  "flip_left_right": "barlow_jax.data.colour.flip_left_right",
  "gaussian_blur": "barlow_jax.data.colour.gaussian_blur",
  "LUMA": "barlow_jax.data.colour.LUMA",
  "maybe_flip": "barlow_jax.data.augment.maybe_flip",
  "normalize": "barlow_jax.data.colour.normalize",
  "NUM_CROP_ATTEMPTS": "barlow_jax.data.crop.NUM_CROP_ATTEMPTS",
  "permute_channels": "barlow_jax.data.colour.permute_channels",
  "random_resized_crop": "barlow_jax.data.crop.random_resized_crop",
  "resize_image": "barlow_jax.data.crop.resize_image",
  "RESIZE_METHODS": "barlow_jax.data.crop.RESIZE_METHODS",
  "solarize": "barlow_jax.data.colour.solarize",
  "to_float": "barlow_jax.data.crop.to_float",
  "to_grayscale": "barlow_jax.data.colour.to_grayscale",
  "to_uint8": "barlow_jax.data.crop.to_uint8",
}

__getattr__ = deprecation_getattr("barlow_jax.augment", _DEPRECATED)
