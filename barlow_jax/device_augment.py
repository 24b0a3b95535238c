"""Old import path of the on-device colour ops: now `barlow_jax.data.device_augment`.

Kept so existing code keeps running; new code imports `barlow_jax.data.device_augment`.
"""

from barlow_jax.data.device_augment import (  # noqa: F401
  APPLIED_KEYS,
  JITTER_OPS,
  LUMA,
  adjust_brightness,
  adjust_contrast,
  adjust_hue,
  adjust_saturation,
  augment_batch,
  augment_image,
  augment_views,
  blur_box_radius,
  blur_half_width,
  blur_radius,
  color_jitter,
  example_keys,
  gaussian_blur,
  hsv_to_rgb,
  normalize,
  pil_gaussian_kernel,
  prepare_views,
  rgb_to_hsv,
  sample_params,
  solarize,
  to_grayscale,
  to_unit,
  validate_config,
)
