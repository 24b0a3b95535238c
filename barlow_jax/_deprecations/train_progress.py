"""Deprecated import path of the pretraining loop's progress report: now `barlow_jax.train`.

Every name here warns `DeprecationWarning` naming its new home and goes in barlow_jax 0.3
(`barlow_jax._deprecations`, CHANGELOG.md).
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {
  "INPUT_WAIT": "barlow_jax.train.INPUT_WAIT",
  "TrainProgress": "barlow_jax.train.TrainProgress",
}

__getattr__ = deprecation_getattr("barlow_jax.train_progress", _DEPRECATED)
