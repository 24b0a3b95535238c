"""Deprecated import path of the offline digits datasets: now `barlow_jax.data.digits` (NumPy only).

Every name here warns `DeprecationWarning` naming its new home and goes in barlow_jax 0.3
(`barlow_jax._deprecations`, CHANGELOG.md).
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {
  "cluttered_digits": "barlow_jax.data.digits.cluttered_digits",
  "CLUTTERED_RENDERS": "barlow_jax.data.digits.CLUTTERED_RENDERS",
  "CLUTTERED_SIZE": "barlow_jax.data.digits.CLUTTERED_SIZE",
  "digits": "barlow_jax.data.digits.digits",
  "DIGITS_SIZE": "barlow_jax.data.digits.DIGITS_SIZE",
  "IN_MEMORY": "barlow_jax.data.digits.IN_MEMORY",
  "NUM_TEST_DIGITS": "barlow_jax.data.digits.NUM_TEST_DIGITS",
  "NUM_TRAIN_DIGITS": "barlow_jax.data.digits.NUM_TRAIN_DIGITS",
}

__getattr__ = deprecation_getattr("barlow_jax.datasets", _DEPRECATED)
