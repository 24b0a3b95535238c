"""Deprecated import path of PIL's Gaussian blur in TensorFlow: now `barlow_jax.data.blur`.

Every name here warns `DeprecationWarning` naming its new home and goes in barlow_jax 0.3
(`barlow_jax._deprecations`, CHANGELOG.md).
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {
  "blur_batch": "barlow_jax.data.blur.blur_batch",
  "blur_image": "barlow_jax.data.blur.blur_image",
  "box_radius": "barlow_jax.data.blur.box_radius",
  "kernel_radius": "barlow_jax.data.blur.kernel_radius",
  "pil_gaussian_kernel": "barlow_jax.data.blur.pil_gaussian_kernel",
}

__getattr__ = deprecation_getattr("barlow_jax.blur", _DEPRECATED)
