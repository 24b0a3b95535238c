"""The data side: sources, the pretraining and evaluation pipelines, the augmentations.

It knows no network: nothing here imports models, training or evaluation code.

  sources.py         the registry of source kinds (`SOURCE_KINDS`), `open_source`, and the values
                     derived from the training split (`num_classes`, `steps_per_epoch`, ...)
  stream.py          the interface a source kind implements (`Source`, `Stream`); in-memory arrays
  folder.py          the "folder" kind: images under a directory, one sub-directory per class
  tfds_source.py     the "tfds" kind: any TFDS dataset
  digits.py          the offline digits / cluttered digits (NumPy only)
  batching.py        batch checks, process shards, tf.data options
  pretrain.py        two augmented uint8 views per image (`create_pretrain_iterator`); its
                     crop + flip view A, labelled, for the evaluation's heads (`crop_flip_config`)
  evaluation.py      resize + centre crop (`create_eval_iterator`, `load_labelled_arrays`)
  augment.py         one view: seeds and the per-view composition of the ops below
  crop.py            decoding, random resized crops, PIL-like resizes
  resample.py        the antialiased resize as two vectorised 1-D passes (TensorFlow)
  colour.py          colour jitter, grayscale, blur, solarize, normalisation (TensorFlow)
  blur.py            PIL's Gaussian blur kernel (TensorFlow)
  device_augment.py  the colour augmentations in the train step (`config.augment.on_device`)
  device_colour.py   their ops in JAX

The pipeline's public functions are also attributes of this package (`barlow_jax.data.
create_pretrain_iterator`, ...), loaded on first use: importing `barlow_jax.data` (or its NumPy /
JAX modules) loads no TensorFlow.
"""

import importlib

# Public name -> the module of this package that defines it.
_EXPORTS = {
  "IN_MEMORY_SPLITS": "sources",
  "SOURCE_KINDS": "sources",
  "SourceKind": "sources",
  "fits_in_memory": "sources",
  "num_classes": "sources",
  "num_train_examples": "sources",
  "open_source": "sources",
  "source_kind": "sources",
  "steps_per_epoch": "sources",
  "list_folder": "folder",
  "check_batch_size": "batching",
  "options": "batching",
  "shard_bounds": "batching",
  "create_pretrain_iterator": "pretrain",
  "normalize_views": "pretrain",
  "two_view_fn": "pretrain",
  "crop_flip_config": "pretrain",
  "labelled_view_a": "pretrain",
  "create_eval_iterator": "evaluation",
  "eval_resize": "evaluation",
  "load_labelled_arrays": "evaluation",
}


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'barlow_jax.data' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"barlow_jax.data.{_EXPORTS[name]}"), name)
  globals()[name] = value  # Later look-ups (and monkeypatching) see a plain attribute.
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
