"""Barlow Twins self-supervised learning in JAX/Flax.

Importing the package is cheap: it loads neither TensorFlow nor TFDS. The input pipeline imports
them when it is built.
"""

from barlow_jax import _deprecations

__version__ = "0.2.0"

# Old module paths (`barlow_jax.augment`, `barlow_jax.preemption`, ...) are tables in
# `_deprecations/`: found there by the import system, they warn on use (`barlow_jax._deprecations`).
__path__.append(_deprecations.OLD_MODULES)  # noqa: F821 (a package's module global)
