"""Old import path of PIL's Gaussian blur in TensorFlow: now `barlow_jax.data.blur`.

Kept so existing code keeps running; new code imports `barlow_jax.data.blur`.
"""

from barlow_jax.data.blur import (  # noqa: F401
  blur_batch,
  blur_image,
  box_radius,
  kernel_radius,
  pil_gaussian_kernel,
)
