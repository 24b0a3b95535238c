"""Deprecated import path of the on-device colour ops: now `barlow_jax.data.device_augment`
(sampling, the view transform) and `barlow_jax.data.device_colour` (the ops).

Every name here warns `DeprecationWarning` naming its new home and goes in barlow_jax 0.3
(`barlow_jax._deprecations`, CHANGELOG.md).
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {
  "adjust_brightness": "barlow_jax.data.device_colour.adjust_brightness",
  "adjust_contrast": "barlow_jax.data.device_colour.adjust_contrast",
  "adjust_hue": "barlow_jax.data.device_colour.adjust_hue",
  "adjust_saturation": "barlow_jax.data.device_colour.adjust_saturation",
  "APPLIED_KEYS": "barlow_jax.data.device_augment.APPLIED_KEYS",
  "augment_batch": "barlow_jax.data.device_augment.augment_batch",
  "augment_image": "barlow_jax.data.device_augment.augment_image",
  "augment_views": "barlow_jax.data.device_augment.augment_views",
  "blur_box_radius": "barlow_jax.data.device_colour.blur_box_radius",
  "blur_half_width": "barlow_jax.data.device_colour.blur_half_width",
  "blur_radius": "barlow_jax.data.device_colour.blur_radius",
  "color_jitter": "barlow_jax.data.device_augment.color_jitter",
  "example_keys": "barlow_jax.data.device_augment.example_keys",
  "gaussian_blur": "barlow_jax.data.device_colour.gaussian_blur",
  "hsv_to_rgb": "barlow_jax.data.device_colour.hsv_to_rgb",
  "JITTER_OPS": "barlow_jax.data.device_augment.JITTER_OPS",
  "LUMA": "barlow_jax.data.device_colour.LUMA",
  "normalize": "barlow_jax.data.device_colour.normalize",
  "pil_gaussian_kernel": "barlow_jax.data.device_colour.pil_gaussian_kernel",
  "prepare_views": "barlow_jax.data.device_augment.prepare_views",
  "rgb_to_hsv": "barlow_jax.data.device_colour.rgb_to_hsv",
  "sample_params": "barlow_jax.data.device_augment.sample_params",
  "solarize": "barlow_jax.data.device_colour.solarize",
  "to_grayscale": "barlow_jax.data.device_colour.to_grayscale",
  "to_unit": "barlow_jax.data.device_colour.to_unit",
  "validate_config": "barlow_jax.data.device_augment.validate_config",
}

__getattr__ = deprecation_getattr("barlow_jax.device_augment", _DEPRECATED)
