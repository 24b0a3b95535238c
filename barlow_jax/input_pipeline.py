"""Old import path of the input pipeline: now the package `barlow_jax.data`.

Kept so existing code keeps running; new code imports `barlow_jax.data` (its pipeline functions
are attributes of the package) or the module that defines a name. Names are looked up on
`barlow_jax.data` at each access, so a function replaced there (a test's monkeypatch) is the one
callers of this path get too.
"""

from barlow_jax import data
from barlow_jax.data import batching  # noqa: F401  (hides every GPU from TensorFlow, as before)


def __getattr__(name: str):
  return getattr(data, name)


def __dir__():
  return dir(data)
