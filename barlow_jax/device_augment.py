"""Old import path of the on-device colour ops: now `barlow_jax.data.device_augment`
(sampling, the view transform) and `barlow_jax.data.device_colour` (the ops).

Kept so existing code keeps running; new code imports `barlow_jax.data.device_augment`.
"""

from barlow_jax.data.device_augment import (  # noqa: F401
  APPLIED_KEYS,
  JITTER_OPS,
  augment_batch,
  augment_image,
  augment_views,
  color_jitter,
  example_keys,
  prepare_views,
  sample_params,
  validate_config,
)
from barlow_jax.data.device_colour import (  # noqa: F401
  LUMA,
  adjust_brightness,
  adjust_contrast,
  adjust_hue,
  adjust_saturation,
  blur_box_radius,
  blur_half_width,
  blur_radius,
  gaussian_blur,
  hsv_to_rgb,
  normalize,
  pil_gaussian_kernel,
  rgb_to_hsv,
  solarize,
  to_grayscale,
  to_unit,
)
