"""Deprecated import path of the input benchmark's PIL side by side: now
`barlow_jax.benchmarks.input` (`run_peer`, `peer_report`, `natural_jpegs`, ...).

Every name here warns `DeprecationWarning` naming its new home and goes in barlow_jax 0.3
(`barlow_jax._deprecations`).
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {
  "FULL": "barlow_jax.benchmarks.input.FULL",
  "HOST_PART": "barlow_jax.benchmarks.input.HOST_PART",
  "PEER": "barlow_jax.benchmarks.input.PEER",
  "WITHOUT": "barlow_jax.benchmarks.input.WITHOUT",
  "natural_jpegs": "barlow_jax.benchmarks.input.natural_jpegs",
  "pin_to_one_core": "barlow_jax.benchmarks.input.pin_to_one_core",
  "report": "barlow_jax.benchmarks.input.peer_report",
  "run": "barlow_jax.benchmarks.input.run_peer",
}

__getattr__ = deprecation_getattr(__name__, _DEPRECATED)
