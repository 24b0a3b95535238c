"""The "tfds" source kind: a TFDS dataset read from `config.dataset.data_dir`.

Every dataset name no other kind claims (`imagenet2012`, `cifar10`, `stl10` with split
"unlabelled", ...). Splits are read in file order (TFDS shuffles examples across files when it
prepares them) and sharded over processes with `tfds.split_for_jax_process`; the pretraining
stream shuffles through a `config.dataset.shuffle_buffer` seeded per epoch, and
`config.dataset.cache` keeps a shard's encoded examples in memory after the first epoch.
Encoded images are kept as bytes until the augmentation, which decodes each once for both
views.

`config.dataset.class_subset` keeps the examples of some classes only, in every split, relabelled
0..K-1 in the order of their TFDS label ids: "imagenet100" (solo-learn's ImageNet-100 over
`imagenet2012`, `class_lists/imagenet100.txt`) or a text file of class names. The subset's size is
counted once per split with a pass over the labels (no image decoded); on ImageNet that reads the
split's files once at start-up.
"""

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow as tf

from barlow_jax.data.crop import decode_image
from barlow_jax.data.stream import MAX_EPOCHS, Source, Stream

# TFDS datasets whose splits are held as arrays in host memory by the evaluation (CIFAR: 50k
# 32x32 images, 150 MB as uint8); every other TFDS dataset streams.
SMALL_DATASETS = ("cifar10", "cifar100")


def fits_in_memory(name: str) -> bool:
  """Whether TFDS dataset `name` ("cifar10", "cifar100:3.0.2", ...) is one of `SMALL_DATASETS`."""
  return name.split(":")[0].split("/")[0] in SMALL_DATASETS


@dataclasses.dataclass
class TfdsSource(Source):
  """A TFDS split, read in file order (`tfds.split_for_jax_process` shards it)."""

  builder: Any
  split: str
  num_examples: int
  has_labels: bool
  image_key: str
  label_key: str
  # config.dataset.class_subset: the kept classes' TFDS label ids, sorted (their new labels are
  # 0, 1, ... in this order); () = every class.
  class_ids: tuple[int, ...] = ()

  def num_classes(self) -> int:
    if self.class_ids:
      return len(self.class_ids)
    return int(getattr(self._feature(self.label_key), "num_classes", 0) or 0)

  def _feature(self, key):
    return self.builder.info.features[key]

  def _image_is_encoded(self) -> bool:
    import tensorflow_datasets as tfds

    return isinstance(self._feature(self.image_key), tfds.features.Image)

  def _local(self, process_index, process_count) -> tf.data.Dataset:
    """The process's shard: dataset of {"index", "image", ["label"]}, images kept encoded."""
    import tensorflow_datasets as tfds

    split = tfds.split_for_jax_process(
      self.split, process_index=process_index, process_count=process_count
    )
    decoders = None
    if self._image_is_encoded():
      decoders = {self.image_key: tfds.decode.SkipDecoding()}
    ds = self.builder.as_dataset(
      split=split,
      decoders=decoders,
      shuffle_files=False,
      read_config=tfds.ReadConfig(try_autocache=False),
    )
    relabel = None
    if self.class_ids:
      ds, relabel = _keep_classes(ds, self.label_key, self.class_ids)

    def select(i, ex):
      out = {"index": i * process_count + process_index, "image": ex[self.image_key]}
      if self.has_labels:
        label = tf.cast(ex[self.label_key], tf.int32)
        out["label"] = label if relabel is None else tf.gather(relabel, label)
      return out

    return ds.enumerate().map(select, num_parallel_calls=tf.data.AUTOTUNE)

  def _label(self, ex):
    return ex["label"] if self.has_labels else tf.constant(0, tf.int32)

  def train_stream(self, order, *, start_epoch, skip, per_epoch, process_index, process_count):
    local = self._local(process_index, process_count)
    if order.cache:
      local = local.cache()
    buffer, seed = int(order.shuffle_buffer), int(order.seed)

    def epoch_examples(epoch):
      shuffle_seed = (seed * 1_000_003 + epoch) % (2**31 - 1)
      shuffled = local.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
      return shuffled.take(per_epoch).map(lambda ex: (epoch, ex))

    stream = tf.data.Dataset.range(start_epoch, MAX_EPOCHS).flat_map(epoch_examples)
    stream = stream.skip(skip)  # Bytes only: nothing is decoded.

    def load(epoch, ex):
      return epoch, ex["index"], ex["image"], self._label(ex)

    return Stream(stream, load, self._image_is_encoded())

  def eval_stream(self, *, process_index, process_count):
    encoded = self._image_is_encoded()

    def load(ex):
      image = decode_image(ex["image"]) if encoded else ex["image"]
      return image, self._label(ex)

    return Stream(self._local(process_index, process_count), load)


# Packaged class lists for config.dataset.class_subset (one class name per whitespace-separated
# word; "#" starts a comment line), by the name a config gives them.
CLASS_LISTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "class_lists")


def class_subset_names(subset: str) -> list[str]:
  """The class names of `config.dataset.class_subset`: a packaged list's name ("imagenet100",
  `CLASS_LISTS_DIR`) or the path of a text file of names; "" = every class ([]).

  Raises:
    ValueError: no such list or file, an empty list, or a name listed twice.
  """
  if not subset:
    return []
  packaged = os.path.join(CLASS_LISTS_DIR, f"{subset}.txt")
  path = packaged if os.path.isfile(packaged) else subset
  if not os.path.isfile(path):
    lists = sorted(n[:-4] for n in os.listdir(CLASS_LISTS_DIR) if n.endswith(".txt"))
    raise ValueError(
      f"config.dataset.class_subset={subset!r} is neither a packaged class list ({lists}) nor a "
      "text file of class names."
    )
  with open(path) as f:
    names = [w for line in f if not line.lstrip().startswith("#") for w in line.split()]
  if not names or len(set(names)) != len(names):
    raise ValueError(
      f"config.dataset.class_subset={subset!r} ({path}) must list distinct class names, "
      f"got {len(names)} names, {len(set(names))} distinct."
    )
  return names


def _class_ids(builder, label_key: str, subset: str) -> tuple[int, ...]:
  """The TFDS label ids of the subset's classes, sorted."""
  names = class_subset_names(subset)
  if not names:
    return ()
  feature = builder.info.features[label_key]
  known = set(getattr(feature, "names", None) or [])
  missing = [n for n in names if n not in known]
  if missing:
    raise ValueError(
      f"config.dataset.class_subset={subset!r}: {len(missing)} class(es) are not labels of "
      f"{builder.info.name!r} (label feature {label_key!r}), e.g. {missing[:3]}."
    )
  return tuple(sorted(feature.str2int(n) for n in names))


def _keep_classes(ds: tf.data.Dataset, label_key: str, class_ids: tuple[int, ...]):
  """`ds` without the examples of other classes, and the old-label -> new-label lookup."""
  relabel = np.full(max(class_ids) + 1, -1, np.int32)
  relabel[list(class_ids)] = np.arange(len(class_ids), dtype=np.int32)
  relabel = tf.constant(relabel)

  def keep(ex):
    label = tf.cast(ex[label_key], tf.int32)
    inside = tf.logical_and(label >= 0, label <= max(class_ids))
    kept = tf.gather(relabel, tf.clip_by_value(label, 0, max(class_ids))) >= 0
    return tf.logical_and(inside, kept)

  return ds.filter(keep), relabel


# (data_dir, split, label_key, class_ids) -> count: a split is opened several times per run.
_SUBSET_COUNTS: dict[tuple, int] = {}


def _subset_count(builder, split: str, label_key: str, class_ids: tuple[int, ...]) -> int:
  """Examples of `split` in the subset: one pass over the labels (no image is decoded), cached."""
  import tensorflow_datasets as tfds

  key = (str(builder.data_dir), split, label_key, class_ids)
  if key in _SUBSET_COUNTS:
    return _SUBSET_COUNTS[key]
  ds = builder.as_dataset(
    split=split, decoders=tfds.decode.PartialDecoding({label_key: True}), shuffle_files=False
  )
  ds, _ = _keep_classes(ds, label_key, class_ids)
  _SUBSET_COUNTS[key] = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
  return _SUBSET_COUNTS[key]


def _tfds_builder(config, other_names):
  import tensorflow_datasets as tfds

  data_dir = config.dataset.data_dir or None
  try:
    return tfds.builder(config.dataset.name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    named = ", ".join(repr(n) for n in sorted(other_names))
    raise ValueError(
      f"config.dataset.name={config.dataset.name!r} is neither {named} nor a TFDS dataset name "
      f"({e.__class__.__name__})."
    ) from None


def _tfds_count(builder, split: str) -> int:
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError):
    # Not in the metadata (e.g. under tfds.testing.mock_data): count the examples.
    ds = builder.as_dataset(split=split)
    n = int(ds.cardinality())
    if n < 0:
      n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    return n


def open_tfds(config, split: str, *, other_names=()) -> Source:
  """Split `split` of the TFDS dataset `config.dataset.name` (`other_names`: the names other
  source kinds serve, listed when no TFDS dataset has the name)."""
  name, image_key = config.dataset.name, config.dataset.image_key
  label_key = config.dataset.label_key
  builder = _tfds_builder(config, other_names)
  features = builder.info.features
  if image_key not in features:
    raise ValueError(
      f"config.dataset.image_key={image_key!r} is not a feature of {name!r} "
      f"(features: {sorted(features.keys())})."
    )
  has_labels = bool(label_key) and label_key in features
  if split.split("[")[0] in ("unlabelled", "unlabeled"):
    has_labels = False  # E.g. stl10's 100k unlabelled images carry label -1.
  subset = config.dataset.get("class_subset", "")
  if subset and not (bool(label_key) and label_key in features):
    raise ValueError(
      f"config.dataset.class_subset={subset!r} needs class labels, but {name!r} has no feature "
      f"config.dataset.label_key={label_key!r}."
    )
  class_ids = _class_ids(builder, label_key, subset)
  if class_ids:
    count = _subset_count(builder, split, label_key, class_ids)
  else:
    count = _tfds_count(builder, split)
  return TfdsSource(builder, split, count, has_labels, image_key, label_key, class_ids)
