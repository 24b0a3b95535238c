"""Deprecated import path of the classification metrics: now `barlow_jax.evaluation.features`.

Every name here warns `DeprecationWarning` naming its new home and goes in barlow_jax 0.3
(`barlow_jax._deprecations`).
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {
  "topk_accuracy": "barlow_jax.evaluation.features.topk_accuracy",
  "topk_counts": "barlow_jax.evaluation.features.topk_counts",
}

__getattr__ = deprecation_getattr(__name__, _DEPRECATED)
