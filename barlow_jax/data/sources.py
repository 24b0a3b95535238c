"""Sources: where the examples of a split come from, one registry of source kinds.

`SOURCE_KINDS` maps a kind to the `config.dataset.name` values it serves and to the function that
opens one split as a `Source`; both pipelines (`barlow_jax.data.pretrain`, `.evaluation`) and the
derived values (`num_classes`, `num_train_examples`, `steps_per_epoch`) go through `open_source`,
so a new kind is one registry entry. The kinds:
  - "in_memory": "cluttered_digits", "digits", generated in memory from scikit-learn's digits
    (`barlow_jax.data.digits`); splits "train" and "test" ("validation" is an alias of "test").
  - "folder": images under `config.dataset.folder` (`barlow_jax.data.folder`).
  - "tfds": every other name, a TFDS dataset read from `config.dataset.data_dir`
    (`barlow_jax.data.tfds_source`).
The interface a kind implements is `barlow_jax.data.stream.Source`.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from barlow_jax.data import digits as digits_lib
from barlow_jax.data import folder, stream, tfds_source

IN_MEMORY_SPLITS = {"train": "train", "test": "test", "validation": "test"}


@functools.lru_cache(maxsize=4)
def _in_memory(name: str):
  return digits_lib.IN_MEMORY[name](seed=0)  # Fixed render seed: the same test set always.


def _open_in_memory(config, split: str) -> stream.Source:
  name = config.dataset.name
  if split not in IN_MEMORY_SPLITS:
    raise ValueError(
      f"dataset {name!r} has splits {sorted(IN_MEMORY_SPLITS)}, got split {split!r}."
    )
  images, labels = _in_memory(name)[IN_MEMORY_SPLITS[split]]
  return stream.ArraySource(images, labels)


# ---------------------------------------------------------------------------------------------
# The registry, and the values derived from the training split.


def _named() -> list[str]:
  """Every dataset name a kind claims (listed when an unknown name reaches TFDS)."""
  return [name for kind in SOURCE_KINDS.values() for name in kind.names]


def _open_tfds(config, split: str) -> stream.Source:
  return tfds_source.open_tfds(config, split, other_names=_named())


@dataclasses.dataclass(frozen=True)
class SourceKind:
  """One kind of source: the `config.dataset.name` values it serves, and how to open a split.

  `names` empty: the fallback kind, for every name no other kind claims (TFDS).
  `open(config, split)` returns a `Source` or raises a ValueError naming the config key at fault.
  `fits_in_memory(name)`: whether dataset `name`'s splits are small enough to hold as arrays.
  """

  open: Callable[[Any, str], stream.Source]
  names: tuple[str, ...] = ()
  fits_in_memory: Callable[[str], bool] = lambda name: False


SOURCE_KINDS: dict[str, SourceKind] = {
  "in_memory": SourceKind(_open_in_memory, tuple(digits_lib.IN_MEMORY), lambda name: True),
  "folder": SourceKind(folder.open_folder, ("folder",)),
  "tfds": SourceKind(_open_tfds, fits_in_memory=tfds_source.fits_in_memory),
}


def source_kind(name: str) -> str:
  """The key of `SOURCE_KINDS` that serves dataset `name` (a kind naming it, else the fallback)."""
  fallback = None
  for kind, entry in SOURCE_KINDS.items():
    if name in entry.names:
      return kind
    if not entry.names:
      fallback = kind
  if fallback is None:
    raise ValueError(f"config.dataset.name={name!r}: no source kind serves it.")
  return fallback


def open_source(config, split: str) -> stream.Source:
  """Split `split` of `config.dataset.name`, opened by its kind (`source_kind`).

  Raises:
    ValueError: for an empty split, a split or dataset that does not exist, or a folder / TFDS
      setting that does not fit (each naming the config key).
  """
  if not split:
    raise ValueError("empty split name (config.dataset.*_split).")
  return SOURCE_KINDS[source_kind(config.dataset.name)].open(config, split)


def fits_in_memory(name: str) -> bool:
  """Whether the splits of dataset `name` are small enough to hold as arrays in host memory (the
  linear probe's "features" protocol, semi-supervised fractions), as its kind says."""
  return SOURCE_KINDS[source_kind(name)].fits_in_memory(name)


def num_classes(config, split: str | None = None) -> int:
  """Number of label classes of `split` (default: the training split); 0 when it is unlabelled
  or its labels are not class labels."""
  source = open_source(config, split or config.dataset.train_split)
  return source.num_classes() if source.has_labels else 0


def num_train_examples(config) -> int:
  """Examples per epoch: `config.num_train_examples` if > 0, else the training split's size."""
  if config.num_train_examples > 0:
    return int(config.num_train_examples)
  return open_source(config, config.dataset.train_split).num_examples


def steps_per_epoch(config) -> int:
  """num_train_examples(config) // config.batch_size (the remainder is dropped)."""
  n = num_train_examples(config)
  steps = n // int(config.batch_size)
  if steps < 1:
    raise ValueError(
      f"config.batch_size={config.batch_size} is larger than the {n} training examples of "
      f"{config.dataset.name!r}; lower it."
    )
  return steps
