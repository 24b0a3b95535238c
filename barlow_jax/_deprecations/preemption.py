"""Deprecated import path of the SIGTERM / Ctrl-C stop request: now `barlow_jax.progress`.

Every name here warns `DeprecationWarning` naming its new home and goes in barlow_jax 0.3
(`barlow_jax._deprecations`, CHANGELOG.md).
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {
  "PreemptionFlag": "barlow_jax.progress.PreemptionFlag",
  "SYNC_EVERY_STEPS": "barlow_jax.progress.SYNC_EVERY_STEPS",
}

__getattr__ = deprecation_getattr("barlow_jax.preemption", _DEPRECATED)
