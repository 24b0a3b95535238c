"""Deprecated import path of joining a multi-process run: now `barlow_jax.launch`.

Every name here warns `DeprecationWarning` naming its new home and goes in barlow_jax 0.3
(`barlow_jax._deprecations`, CHANGELOG.md).
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {"initialize": "barlow_jax.launch.initialize"}

__getattr__ = deprecation_getattr("barlow_jax.distributed", _DEPRECATED)
