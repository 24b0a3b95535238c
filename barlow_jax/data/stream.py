"""The interface every source kind implements: one split's size, labels and local streams.

A `Source` is one split of one dataset. Both pipelines read it through two process-local
streams, each a tf.data dataset plus the map that loads an element, so that pipelines fuse the
load into their own map and skip elements without loading them: `train_stream` (epochs in a
seeded order, for `barlow_jax.data.pretrain`) and `eval_stream` (one pass in a fixed order, for
`barlow_jax.data.evaluation`). Sources with random access (`IndexedSource`: arrays, files) are
permuted exactly each epoch with an order drawn from (config.seed, epoch) (`TrainOrder`).
"""

import abc
import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from barlow_jax.data.augment import example_seed
from barlow_jax.data.batching import shard_bounds

MAX_EPOCHS = 2**40  # "Infinite": the epoch counter of the pretraining stream.


class Stream(NamedTuple):
  """A process-local tf.data stream and the map that loads one of its elements.

  The pretraining stream's `load(*element)` gives (epoch, index, image, label) with `image`
  encoded bytes when `is_bytes`, else a decoded [H, W, 3] uint8 or [0, 1] float image; the
  evaluation stream's gives (decoded image, label). Pipelines fuse `load` into their own map, so
  a skipped element is never loaded.
  """

  dataset: tf.data.Dataset
  load: Callable[..., tuple]
  is_bytes: bool = False


@dataclasses.dataclass(frozen=True)
class TrainOrder:
  """How the pretraining stream orders its epochs, as plain values read once by the pipeline
  (`barlow_jax.data.pretrain`): `seed` (`config.seed`), `shuffle_buffer`
  (`config.dataset.shuffle_buffer`, sources without random access) and `cache`
  (`config.dataset.cache`: keep a shard's encoded examples in memory after the first epoch)."""

  seed: int
  shuffle_buffer: int = 0
  cache: bool = False


class Source(abc.ABC):
  """One split of one dataset: its size, its labels and its process-local streams."""

  num_examples: int
  has_labels: bool

  @abc.abstractmethod
  def num_classes(self) -> int:
    """Label classes of this split (called only when it has labels)."""

  @abc.abstractmethod
  def train_stream(
    self,
    order: TrainOrder,
    *,
    start_epoch: int,
    skip: int,
    per_epoch: int,
    process_index,
    process_count,
  ) -> Stream:
    """Epochs start_epoch, start_epoch + 1, ... of (epoch, example) elements of the process's
    shard, `per_epoch` per epoch in the epoch's `order`, the first `skip` left out unloaded."""

  @abc.abstractmethod
  def eval_stream(self, *, process_index, process_count) -> Stream:
    """The process's shard once, in a fixed order."""


class IndexedSource(Source):
  """A source with random access by index: each epoch is an exact permutation of the shard.

  Subclasses hold `labels` (int32 [N]) and set `is_bytes` when their payloads are files to read.
  """

  labels: np.ndarray
  is_bytes = False

  def num_classes(self) -> int:
    return int(self.labels.max()) + 1 if len(self.labels) else 0

  @abc.abstractmethod
  def gather_tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
    """(payloads [N] (images or paths), int32 labels [N], zeros when unlabelled) as constants."""

  def train_stream(self, order, *, start_epoch, skip, per_epoch, process_index, process_count):
    lo, hi = shard_bounds(self.num_examples, process_index, process_count)
    seed = int(order.seed)

    def epoch_indices(epoch):
      key = example_seed(seed, epoch, -1, -1)  # The order's own seed.
      order = tf.argsort(tf.random.stateless_uniform([hi - lo], seed=key))
      indices = tf.cast(order[:per_epoch], tf.int64) + lo
      epochs = tf.fill([per_epoch], epoch)
      return tf.data.Dataset.from_tensor_slices((epochs, indices))

    stream = tf.data.Dataset.range(start_epoch, MAX_EPOCHS).flat_map(epoch_indices)
    stream = stream.skip(skip)  # Indices only: nothing is decoded.
    payloads, labels = self.gather_tensors()
    read = tf.io.read_file if self.is_bytes else (lambda x: x)

    def load(epoch, index):
      return epoch, index, read(tf.gather(payloads, index)), tf.gather(labels, index)

    return Stream(stream, load, self.is_bytes)


@dataclasses.dataclass
class ArraySource(IndexedSource):
  """Images in memory: float32 [N, H, W, 3] in [0, 1] and int32 labels [N]."""

  images: np.ndarray
  labels: np.ndarray
  has_labels: bool = True

  @property
  def num_examples(self) -> int:
    return len(self.images)

  def gather_tensors(self):
    return tf.constant(self.images), tf.constant(self.labels)

  def eval_stream(self, *, process_index, process_count):
    lo, hi = shard_bounds(self.num_examples, process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices((self.images[lo:hi], self.labels[lo:hi]))
    return Stream(ds, lambda image, label: (image, label))
