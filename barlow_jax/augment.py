"""Old import path of the host augmentations: now `barlow_jax.data.augment` (one view),
`barlow_jax.data.crop` (decoding, crops, resizes) and `barlow_jax.data.colour` (colour ops).

Kept so existing code keeps running; new code imports the modules under `barlow_jax.data`.
"""

from barlow_jax.data.augment import (  # noqa: F401
  APPLIED_KEYS,
  augment_cropped,
  augment_view,
  crop_seed,
  crop_view,
  example_seed,
  maybe_flip,
)
from barlow_jax.data.colour import (  # noqa: F401
  LUMA,
  adjust_brightness,
  adjust_contrast,
  adjust_hue,
  adjust_saturation,
  blur_radius,
  color_jitter,
  flip_left_right,
  gaussian_blur,
  normalize,
  permute_channels,
  solarize,
  to_grayscale,
)
from barlow_jax.data.crop import (  # noqa: F401
  NUM_CROP_ATTEMPTS,
  RESIZE_METHODS,
  check_resize_method,
  crop_window,
  decode_and_random_resized_crop,
  decode_image,
  decode_image_uint8,
  decode_whole,
  eval_resize_crop,
  random_resized_crop,
  resize_image,
  to_float,
  to_uint8,
)
