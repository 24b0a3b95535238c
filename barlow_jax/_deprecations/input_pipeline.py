"""Deprecated import path of the input pipeline: now the package `barlow_jax.data`.

Its pipeline functions are attributes of `barlow_jax.data` (defined in the module its
`__init__` names). Every name here warns `DeprecationWarning` naming its new home and goes in
barlow_jax 0.3 (`barlow_jax._deprecations`, CHANGELOG.md). A name is looked up on
`barlow_jax.data` at each access, so a function replaced there (a test's monkeypatch) is the one
callers of this path get too.
"""

from barlow_jax._deprecations import deprecation_getattr

_DEPRECATED = {
  "check_batch_size": "barlow_jax.data.check_batch_size",
  "create_eval_iterator": "barlow_jax.data.create_eval_iterator",
  "create_pretrain_iterator": "barlow_jax.data.create_pretrain_iterator",
  "eval_resize": "barlow_jax.data.eval_resize",
  "fits_in_memory": "barlow_jax.data.fits_in_memory",
  "IN_MEMORY_SPLITS": "barlow_jax.data.IN_MEMORY_SPLITS",
  "list_folder": "barlow_jax.data.list_folder",
  "load_labelled_arrays": "barlow_jax.data.load_labelled_arrays",
  "normalize_views": "barlow_jax.data.normalize_views",
  "num_classes": "barlow_jax.data.num_classes",
  "num_train_examples": "barlow_jax.data.num_train_examples",
  "open_source": "barlow_jax.data.open_source",
  "options": "barlow_jax.data.options",
  "shard_bounds": "barlow_jax.data.shard_bounds",
  "source_kind": "barlow_jax.data.source_kind",
  "SOURCE_KINDS": "barlow_jax.data.SOURCE_KINDS",
  "SourceKind": "barlow_jax.data.SourceKind",
  "steps_per_epoch": "barlow_jax.data.steps_per_epoch",
  "two_view_fn": "barlow_jax.data.two_view_fn",
}

__getattr__ = deprecation_getattr("barlow_jax.input_pipeline", _DEPRECATED)
