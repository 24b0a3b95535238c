"""Barlow Twins self-supervised learning in JAX/Flax.

Importing the package is cheap: it loads neither TensorFlow nor TFDS. The input pipeline imports
them when it is built.
"""

from barlow_jax import _deprecations

__version__ = "0.2.0"

# Old module paths (`barlow_jax.augment`, `barlow_jax.preemption`, ...) are tables in
# `_deprecations/`: found there by the import system, they warn on use (`barlow_jax._deprecations`).
if _deprecations.OLD_MODULES not in __path__:  # Once, even under importlib.reload.
  __path__.append(_deprecations.OLD_MODULES)
