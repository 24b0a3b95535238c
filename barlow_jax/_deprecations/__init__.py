"""Old import paths: a module `__getattr__` that warns and hands out the name from its new home.

The pattern of jax (`jax._src.deprecations.deprecation_getattr`) and optax: a module that kept
names for existing code holds one table, old name -> new dotted name, and

    __getattr__ = deprecation_getattr(__name__, _DEPRECATED)

Accessing an old name (`barlow_jax.augment.solarize`, `from barlow_jax.train import
create_mesh`) emits a `DeprecationWarning` that names the new home and the release that removes
the old one, then returns the object of the new home, looked up at each access (so a function
replaced there, e.g. by a test's monkeypatch, is what the old path gives too). Every message
starts with the old dotted name, `barlow_jax.`: pytest's `filterwarnings` (pyproject.toml) turns
exactly these into errors, so neither the project's code nor its tests use an old path.

Imports only the standard library: a shim module loads its new homes on first access.

Old modules. A module that moved away whole (`barlow_jax.augment`, `barlow_jax.preemption`, ...)
keeps its import path as a file of this package holding only its table, `_deprecations/NAME.py`
for `barlow_jax.NAME`: `barlow_jax/__init__.py` appends this folder to the package's `__path__`
(`OLD_MODULES`), so Python's own path finder imports `barlow_jax.NAME` from it. `import
barlow_jax.augment`, `from barlow_jax import augment`, `from barlow_jax.augment import solarize`,
`importlib.reload` and `python -m` keep working; importing one warns nothing and loads nothing
but this package, accessing a name warns as above. The package's top level then holds only
modules with code of their own.
"""

import importlib
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

# The release that removes every name of every table (CHANGELOG.md).
REMOVED_IN = "0.3"
# The folder of the old modules' tables: one more directory of `barlow_jax.__path__`.
OLD_MODULES = os.path.dirname(os.path.abspath(__file__))


def deprecation_message(old: str, new: str) -> str:
  """The warning for `old` (a dotted name, `barlow_jax.train.create_mesh`) and its new home."""
  return (
    f"{old} is deprecated and will be removed in barlow_jax {REMOVED_IN}: "
    f"use {new} instead (CHANGELOG.md)."
  )


def resolve(new: str) -> Any:
  """The object a dotted name `package.module.attr` names (the module imported if needed)."""
  module, _, attr = new.rpartition(".")
  return getattr(importlib.import_module(module), attr)


def deprecation_getattr(module: str, table: Mapping[str, str]) -> Callable[[str], Any]:
  """A module-level `__getattr__` for `module` that serves `table`'s old names.

  Args:
    module: the old module's `__name__`.
    table: old name -> the new home's dotted name (`"barlow_jax.data.colour.solarize"`).

  Returns:
    `__getattr__(name)`: warns `DeprecationWarning` and returns the new home's object for a name
    of the table; raises `AttributeError` for any other name.
  """

  def __getattr__(name: str) -> Any:
    new = table.get(name)
    if new is None:
      raise AttributeError(f"module {module!r} has no attribute {name!r}")
    # stacklevel 2: the warning points at the line that used the old name.
    warnings.warn(deprecation_message(f"{module}.{name}", new), DeprecationWarning, stacklevel=2)
    return resolve(new)

  return __getattr__
