"""Deprecated import path of the kNN monitor: now `barlow_jax.evaluation.knn`
(`monitor_enabled`, `monitor_accuracy`).

Every name here warns `DeprecationWarning` naming its new home and goes in barlow_jax 0.3
(`barlow_jax._deprecations`).
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {
  "accuracy": "barlow_jax.evaluation.knn.monitor_accuracy",
  "is_enabled": "barlow_jax.evaluation.knn.monitor_enabled",
}

__getattr__ = deprecation_getattr("barlow_jax.knn_monitor", _DEPRECATED)
