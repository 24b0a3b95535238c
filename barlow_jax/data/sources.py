"""Host-side input pipeline (tf.data): two augmented views per image, sharded over processes.

TensorFlow only feeds data: importing this module hides every GPU from it, so it never touches an
accelerator. Nothing else in the package imports TensorFlow at module level.

Datasets (`config.dataset.name`):
  - "cluttered_digits", "digits": generated in memory from scikit-learn's digits
    (`barlow_jax.datasets`); splits "train" and "test" ("validation" is an alias of "test").
  - "folder": images under `config.dataset.folder`. A split `s` reads `folder/s/` when that
    directory exists, else the folder itself for the training split. Inside, sub-directories
    are classes (`root/class/x.jpg`, labels = sorted class names) or, with no sub-directories,
    the images are unlabelled. Every file is decoded once when the folder is first listed (in
    parallel); files that do not decode (corrupt, not an image) are skipped with a warning that
    gives their count and first paths, so an epoch never fails halfway. Grayscale, RGBA and
    16-bit PNGs are converted to 8-bit-range RGB floats.
  - anything else: a TFDS dataset (`imagenet2012`, `cifar10`, `stl10` with split "unlabelled",
    ...) read from `config.dataset.data_dir`. Encoded images are kept as bytes until the
    augmentation, which decodes each once for both views.

Order and resumability: epoch `e` visits the process's shard in an order drawn from
(config.seed, e) and augments example `i` with seeds drawn from (config.seed, e, i, view), all
with stateless ops. So `create_pretrain_iterator(config, start_step=k)` yields exactly batches
k, k+1, ... of a run started at 0, skipping the first k % steps_per_epoch batches of the epoch
without decoding them. In-memory and folder datasets are permuted exactly; TFDS datasets are
read in file order (TFDS shuffles examples across files when it prepares them) through a
`config.dataset.shuffle_buffer` shuffle seeded per epoch; `config.dataset.cache` keeps a TFDS
shard's encoded examples in memory after the first epoch (in-memory datasets need no cache; folders
are re-read each epoch). Each epoch has exactly
`steps_per_epoch(config)` batches on every process (remainders dropped, docs/reference.md §3).

Multi-host: process p of P reads its own shard (an even split of the examples, or
`tfds.split_for_jax_process`) and yields config.batch_size // P examples per step; the trainer
assembles global arrays with `jax.make_array_from_process_local_data`.
"""

import dataclasses
import functools
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from absl import logging
from etils import epath

from barlow_jax import augment
from barlow_jax import datasets as datasets_lib

try:  # TensorFlow must never take an accelerator from jax.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # Devices were already initialised (then this was done by whoever did it).
  pass

IN_MEMORY_SPLITS = {"train": "train", "test": "test", "validation": "test"}
_MAX_EPOCHS = 2**40  # "Infinite": the epoch counter of the pretraining stream.
_BAD_PATHS_SHOWN = 10


# ---------------------------------------------------------------------------------------------
# Batch sizes and process defaults.


def _process_defaults(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index must be in [0, process_count), got {process_index} of {process_count}."
    )
  return int(process_index), int(process_count)


def check_batch_size(config, num_devices: int, num_processes: int) -> int:
  """Checks that the global batch splits evenly; returns the per-process batch.

  Raises:
    ValueError: naming `config.batch_size` when it is not positive or not divisible by the
      number of processes or of devices.
  """
  batch = int(config.batch_size)
  if batch <= 0:
    raise ValueError(f"config.batch_size must be positive, got {batch}.")
  if batch % num_processes:
    raise ValueError(
      f"config.batch_size={batch} is not divisible by the number of processes ({num_processes}); "
      f"use a multiple of {num_processes}."
    )
  if batch % num_devices:
    raise ValueError(
      f"config.batch_size={batch} is not divisible by the number of devices ({num_devices}); "
      f"use a multiple of {num_devices}."
    )
  return batch // num_processes


def _local_batch(batch_size: int, process_count: int, key: str = "config.batch_size") -> int:
  if batch_size <= 0:
    raise ValueError(f"{key} must be positive, got {batch_size}.")
  if batch_size % process_count:
    raise ValueError(
      f"{key}={batch_size} is not divisible by the number of processes ({process_count}); "
      f"use a multiple of {process_count}."
    )
  return batch_size // process_count


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of process `process_index`'s even shard of `num_examples` examples."""
  return (
    num_examples * process_index // process_count,
    num_examples * (process_index + 1) // process_count,
  )


# ---------------------------------------------------------------------------------------------
# Sources: where the examples of a split come from.


@dataclasses.dataclass
class _Source:
  """One split of one dataset. `kind` is "arrays", "files" or "tfds"."""

  kind: str
  num_examples: int
  has_labels: bool
  images: np.ndarray | None = None  # arrays: [N, H, W, 3] float32 in [0, 1].
  labels: np.ndarray | None = None  # arrays / files: int32 [N].
  paths: np.ndarray | None = None  # files: [N] str.
  builder: object = None  # tfds
  split: str = ""  # tfds split name


@functools.lru_cache(maxsize=4)
def _in_memory(name: str):
  return datasets_lib.IN_MEMORY[name](seed=0)  # Fixed render seed: the same test set always.


_FOLDER_CACHE: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}


def _is_hidden(name: str) -> bool:
  return name.startswith(".")


def _verify_images(paths: list[str]) -> np.ndarray:
  """Boolean [N]: which files decode as images (decoded once, in parallel)."""

  def check(i, path):
    image = augment.decode_whole(tf.io.read_file(path))  # Training's own decoders.
    # Returning something computed from the pixels keeps tf.data from pruning the decode.
    return i, tf.reduce_prod(tf.shape(image))

  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), np.array(paths)))
  ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.ignore_errors()
  ok = np.zeros(len(paths), bool)
  for i, num_values in ds.as_numpy_iterator():
    ok[i] = num_values > 0
  return ok


def _list_folder(directory: str) -> tuple[np.ndarray, np.ndarray | None]:
  """Paths [N] (and int32 labels [N], or None when unlabelled) of the good images.

  `directory` is local or a bucket (gs://...): listing goes through etils.epath, reading through
  tf.io (both speak gs://).
  """
  if "://" not in directory:
    directory = os.path.abspath(os.path.expanduser(directory))
  root = epath.Path(directory)
  if directory in _FOLDER_CACHE:
    return _FOLDER_CACHE[directory]
  if not root.is_dir():
    raise ValueError(f"config.dataset.folder: {directory!r} is not a directory.")
  # Object stores list sub-directories as "name/".
  entries = sorted(n for n in (p.name.rstrip("/") for p in root.iterdir()) if not _is_hidden(n))
  classes = [e for e in entries if (root / e).is_dir()]
  paths, labels = [], []
  if classes:
    for label, name in enumerate(classes):
      for top, dirs, files in (root / name).walk():
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d.rstrip("/")))
        for f in sorted(files):
          if not _is_hidden(f):
            paths.append(os.fspath(top / f))
            labels.append(label)
    loose = [e for e in entries if e not in classes]
    if loose:
      logging.warning(
        "folder %s has class sub-directories; ignoring %d loose files at its top level (%s...)",
        directory,
        len(loose),
        loose[:3],
      )
  else:
    paths = [os.fspath(root / e) for e in entries]
  if not paths:
    raise ValueError(
      f"config.dataset.folder: no files under {directory!r}. Expected root/class/image.jpg "
      "(labelled) or root/image.jpg (unlabelled)."
    )
  ok = _verify_images(paths)
  if not ok.all():
    bad = [p for p, good in zip(paths, ok) if not good]
    logging.warning(
      "folder %s: skipping %d of %d files that do not decode as images; first: %s",
      directory,
      len(bad),
      len(paths),
      bad[:_BAD_PATHS_SHOWN],
    )
  if not ok.any():
    raise ValueError(
      f"config.dataset.folder: none of the {len(paths)} files under "
      f"{directory!r} decodes as an image."
    )
  result = (
    np.array(paths)[ok],
    np.array(labels, np.int32)[ok] if classes else None,
  )
  _FOLDER_CACHE[directory] = result
  return result


def _tfds_builder(config):
  import tensorflow_datasets as tfds

  data_dir = config.dataset.data_dir or None
  try:
    return tfds.builder(config.dataset.name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
      f"config.dataset.name={config.dataset.name!r} is neither 'cluttered_digits', 'digits', "
      f"'folder' nor a TFDS dataset name ({e.__class__.__name__})."
    ) from None


def _tfds_count(builder, split: str, read_split=None) -> int:
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError):
    # Not in the metadata (e.g. under tfds.testing.mock_data): count the examples.
    ds = builder.as_dataset(split=read_split or split)
    n = int(ds.cardinality())
    if n < 0:
      n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    return n


def _source(config, split: str) -> _Source:
  name = config.dataset.name
  if not split:
    raise ValueError("empty split name (config.dataset.*_split).")
  if name in datasets_lib.IN_MEMORY:
    if split not in IN_MEMORY_SPLITS:
      raise ValueError(
        f"dataset {name!r} has splits {sorted(IN_MEMORY_SPLITS)}, got split {split!r}."
      )
    images, labels = _in_memory(name)[IN_MEMORY_SPLITS[split]]
    return _Source("arrays", len(images), True, images=images, labels=labels)
  if name == "folder":
    root = config.dataset.folder
    if not root:
      raise ValueError("config.dataset.folder must be set when config.dataset.name == 'folder'.")
    directory = os.fspath(epath.Path(root) / split)
    if not epath.Path(directory).is_dir():
      if split != config.dataset.train_split:
        raise ValueError(
          f"config.dataset.folder: split {split!r} needs a directory {directory!r}; only the "
          f"training split ({config.dataset.train_split!r}) may use the folder root."
        )
      directory = root
    paths, labels = _list_folder(directory)
    return _Source("files", len(paths), labels is not None, labels=labels, paths=paths)
  builder = _tfds_builder(config)
  features = builder.info.features
  if config.dataset.image_key not in features:
    raise ValueError(
      f"config.dataset.image_key={config.dataset.image_key!r} is not a feature of {name!r} "
      f"(features: {sorted(features.keys())})."
    )
  has_labels = bool(config.dataset.label_key) and config.dataset.label_key in features
  if split.split("[")[0] in ("unlabelled", "unlabeled"):
    has_labels = False  # E.g. stl10's 100k unlabelled images carry label -1.
  return _Source("tfds", _tfds_count(builder, split), has_labels, builder=builder, split=split)


def num_classes(config) -> int:
  """Number of label classes of the training split (0 when it is unlabelled or unknown)."""
  source = _source(config, config.dataset.train_split)
  if not source.has_labels:
    return 0
  if source.kind in ("arrays", "files"):
    return int(source.labels.max()) + 1 if len(source.labels) else 0
  feature = source.builder.info.features[config.dataset.label_key]
  return int(getattr(feature, "num_classes", 0) or 0)


def num_train_examples(config) -> int:
  """Examples per epoch: `config.num_train_examples` if > 0, else the training split's size."""
  if config.num_train_examples > 0:
    return int(config.num_train_examples)
  return _source(config, config.dataset.train_split).num_examples


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


# ---------------------------------------------------------------------------------------------
# Process-local streams of (index, payload, label).


def _tfds_local(config, source: _Source, process_index, process_count, *, decode: bool = False):
  """The process's shard of a TFDS split: dataset of {"index", "image", ["label"]}, and its size.

  Encoded images stay bytes (decoded later, once for both views) unless `decode`.
  """
  import tensorflow_datasets as tfds

  split = tfds.split_for_jax_process(
    source.split, process_index=process_index, process_count=process_count
  )
  image_key, label_key = config.dataset.image_key, config.dataset.label_key
  decoders = None
  if not decode and isinstance(source.builder.info.features[image_key], tfds.features.Image):
    decoders = {image_key: tfds.decode.SkipDecoding()}
  ds = source.builder.as_dataset(
    split=split,
    decoders=decoders,
    shuffle_files=False,
    read_config=tfds.ReadConfig(try_autocache=False),
  )

  def select(i, ex):
    out = {"index": i * process_count + process_index, "image": ex[image_key]}
    if source.has_labels:
      out["label"] = tf.cast(ex[label_key], tf.int32)
    return out

  ds = ds.enumerate().map(select, num_parallel_calls=tf.data.AUTOTUNE)
  return ds, split


def _options(config) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # Resumability needs the same order every time.
  # One thread per op and parallelism across examples, as the flax / big_vision pipelines do.
  options.threading.max_intra_op_parallelism = 1
  options.experimental_optimization.map_parallelization = True
  options.experimental_optimization.parallel_batch = True
  del config
  return options


def _num_parallel_calls(config) -> int:
  n = int(config.dataset.num_parallel_calls)
  return tf.data.AUTOTUNE if n < 0 else n


def _two_views(config, image, seed_a, seed_b, is_bytes: bool):
  """Crops of both views: [S, S, 3] float32 each, from bytes (any format) or a decoded image.

  Encoded images are decoded once for both views (measured on one core, 400x350 JPEGs: 1.6 ms
  for the whole image against 2 x 1.1 ms for the two crop windows through libjpeg's cropping
  decoder), with training's decoders (`augment.decode_whole`).
  """
  size = int(config.dataset.image_size)
  if is_bytes:
    image = augment.decode_whole(image)
  a = augment.crop_view(image, seed_a, config.augment.view_a, size=size)
  b = augment.crop_view(image, seed_b, config.augment.view_b, size=size)
  return tf.ensure_shape(a, [size, size, 3]), tf.ensure_shape(b, [size, size, 3])


def two_view_fn(config, *, is_bytes: bool, with_label: bool):
  """The per-example map of pretraining: (epoch, index, image, label) -> two uint8 views.

  `image` is encoded bytes (any format TensorFlow decodes) when `is_bytes`, else a decoded
  [H, W, 3] uint8 or [0, 1] float image. Seeds come from (config.seed, epoch, index, view).
  Each view is cropped, flipped and, unless `config.augment.on_device`, colour-augmented
  (`augment.augment_cropped`), then rounded to uint8: normalisation by `config.augment.mean` /
  `std` happens in the train step, on the accelerator. Returns {"view_a", "view_b"[, "label"]}.
  """
  seed = int(config.seed)
  on_device = bool(config.augment.on_device)

  def finish(crop, view_seed, view):
    if on_device:
      return augment.to_uint8(augment.maybe_flip(crop, view_seed, view))
    return augment.to_uint8(augment.augment_cropped(crop, view_seed, view))

  def fn(epoch, index, image, label):
    seed_a = augment.example_seed(seed, epoch, index, 0)
    seed_b = augment.example_seed(seed, epoch, index, 1)
    crop_a, crop_b = _two_views(config, image, seed_a, seed_b, is_bytes)
    out = {
      "view_a": finish(crop_a, seed_a, config.augment.view_a),
      "view_b": finish(crop_b, seed_b, config.augment.view_b),
    }
    if with_label:
      out["label"] = tf.cast(label, tf.int32)
    return out

  return fn


def normalize_views(batch: dict, config) -> dict:
  """A pretraining batch with its uint8 views as the network's float32 input (on the host).

  (x / 255 - config.augment.mean) / config.augment.std, for consumers that feed the views to a
  network themselves (the linear probe's training crops, pictures); training does the same in
  its step. Other keys are passed through.
  """
  mean = np.asarray(config.augment.mean, np.float32)
  std = np.asarray(config.augment.std, np.float32)
  out = dict(batch)
  for key in ("view_a", "view_b"):
    pixels = np.asarray(batch[key], np.float32) * np.float32(1 / 255)
    out[key] = (pixels - mean) / std
  return out


def options(config) -> tf.data.Options:
  """The tf.data options of every pipeline here (deterministic, parallel, one thread per op)."""
  return _options(config)


def create_pretrain_iterator(
  config, *, start_step: int = 0, process_index=None, process_count=None
) -> Iterator[dict[str, np.ndarray]]:
  """The infinite stream of process-local two-view training batches.

  Args:
    config: the run config (reads `dataset`, `augment`, `seed`, `batch_size`,
      `num_train_examples`).
    start_step: index of the first batch to yield; batches k, k+1, ... equal those of a run
      started at 0.
    process_index, process_count: this process and the number of processes (default: jax's).

  Yields:
    {"view_a": uint8 [B, S, S, 3], "view_b": uint8 [B, S, S, 3], "label": int32 [B]} with
    B = config.batch_size // process_count, S = config.dataset.image_size; "label" only when the
    dataset has labels. The views are 8-bit pixels (4x less host memory and host-to-device
    traffic than float32): the train step normalises them by `config.augment.mean` / `std`, and
    with `config.augment.on_device` also applies the colour ops; `normalize_views` does it on
    the host.
  """
  process_index, process_count = _process_defaults(process_index, process_count)
  local_batch = _local_batch(int(config.batch_size), process_count)
  # The run's evaluation resize too: a bad value fails at the start, not after pretraining.
  augment.check_resize_method(
    str(config.dataset.eval_interpolation), "config.dataset.eval_interpolation"
  )
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  source = _source(config, config.dataset.train_split)
  spe = steps_per_epoch(config)
  if config.num_train_examples > source.num_examples:
    raise ValueError(
      f"config.num_train_examples={config.num_train_examples} exceeds the "
      f"{source.num_examples} examples of split {config.dataset.train_split!r}."
    )
  per_epoch = spe * local_batch  # Examples each process takes per epoch.
  start_epoch, skip_steps = divmod(int(start_step), spe)
  seed = int(config.seed)

  if source.kind in ("arrays", "files"):
    lo, hi = shard_bounds(source.num_examples, process_index, process_count)

    def epoch_indices(epoch):
      key = augment.example_seed(seed, epoch, -1, -1)  # The order's own seed.
      order = tf.argsort(tf.random.stateless_uniform([hi - lo], seed=key))
      indices = tf.cast(order[:per_epoch], tf.int64) + lo
      epochs = tf.fill([per_epoch], epoch)
      return tf.data.Dataset.from_tensor_slices((epochs, indices))

    stream = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch_indices)
    stream = stream.skip(skip_steps * local_batch)  # Indices only: nothing is decoded.
    if source.kind == "arrays":
      images = tf.constant(source.images)
      labels = tf.constant(source.labels)

      def load(epoch, index):
        return epoch, index, tf.gather(images, index), tf.gather(labels, index)

      is_bytes = False
    else:
      paths = tf.constant(source.paths)
      labels = tf.constant(source.labels if source.has_labels else np.zeros(len(paths), np.int32))

      def load(epoch, index):
        return epoch, index, tf.io.read_file(tf.gather(paths, index)), tf.gather(labels, index)

      is_bytes = True
  else:
    local, _ = _tfds_local(config, source, process_index, process_count)
    if config.dataset.cache:
      local = local.cache()
    buffer = int(config.dataset.shuffle_buffer)

    def epoch_examples(epoch):
      shuffle_seed = (seed * 1_000_003 + epoch) % (2**31 - 1)
      shuffled = local.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
      return shuffled.take(per_epoch).map(lambda ex: (epoch, ex))

    stream = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch_examples)
    stream = stream.skip(skip_steps * local_batch)  # Bytes only: nothing is decoded.

    def load(epoch, ex):
      label = ex["label"] if source.has_labels else tf.constant(0, tf.int32)
      return epoch, ex["index"], ex["image"], label

    is_bytes = _tfds_image_is_encoded(source.builder, config.dataset.image_key)

  views = two_view_fn(config, is_bytes=is_bytes, with_label=source.has_labels)

  def two_view_example(*args):
    return views(*load(*args))

  ds = stream.map(two_view_example, num_parallel_calls=_num_parallel_calls(config))
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config))
  return ds.as_numpy_iterator()


def _tfds_image_is_encoded(builder, image_key: str) -> bool:
  import tensorflow_datasets as tfds

  feature = builder.info.features[image_key]
  return isinstance(feature, tfds.features.Image)


# ---------------------------------------------------------------------------------------------
# Evaluation.


def eval_resize(config) -> int | None:
  """Short side the eval images are resized to before the centre crop, or None (plain resize).

  ImageNet-sized inputs (image_size >= 128) use `config.dataset.eval_resize` (256 for 224 crops);
  small images are resized straight to image_size (a no-op when they already have that size).
  """
  size = int(config.dataset.image_size)
  if size >= 128 and config.dataset.eval_resize > 0:
    return int(config.dataset.eval_resize)
  return None


def _eval_local(config, source: _Source, process_index, process_count):
  """The process's shard, preprocessed: dataset of (image [S,S,3] normalised, label), its size."""
  size = int(config.dataset.image_size)
  resize = eval_resize(config)
  mean, std = tuple(config.augment.mean), tuple(config.augment.std)
  method = augment.check_resize_method(
    str(config.dataset.eval_interpolation), "config.dataset.eval_interpolation"
  )

  def finish(image, label):
    image = augment.eval_resize_crop(image, size=size, resize=resize, method=method)
    return augment.normalize(image, mean, std), tf.cast(label, tf.int32)

  if source.kind == "arrays":
    lo, hi = shard_bounds(source.num_examples, process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices((source.images[lo:hi], source.labels[lo:hi]))
    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE), hi - lo
  if source.kind == "files":
    lo, hi = shard_bounds(source.num_examples, process_index, process_count)
    labels = source.labels if source.has_labels else np.zeros(source.num_examples, np.int32)
    ds = tf.data.Dataset.from_tensor_slices((source.paths[lo:hi], labels[lo:hi]))

    def load(path, label):
      return finish(augment.decode_image(tf.io.read_file(path)), label)

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE), hi - lo
  local, split = _tfds_local(config, source, process_index, process_count)
  encoded = _tfds_image_is_encoded(source.builder, config.dataset.image_key)

  def load_tfds(ex):
    image = augment.decode_image(ex["image"]) if encoded else ex["image"]
    label = ex["label"] if source.has_labels else tf.constant(0, tf.int32)
    return finish(image, label)

  count = _tfds_count(source.builder, split)
  return local.map(load_tfds, num_parallel_calls=tf.data.AUTOTUNE), count


def create_eval_iterator(
  config, split: str, *, batch_size: int, process_index=None, process_count=None
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over a split with evaluation preprocessing, in a fixed order.

  Args:
    config: the run config.
    split: e.g. `config.dataset.eval_split`.
    batch_size: global batch; each process yields batch_size // process_count examples per
      batch, and every process yields the same number of batches (padding with masked batches),
      so the trainer can assemble global arrays.
    process_index, process_count: default jax's.

  Yields:
    {"image": float32 [B, S, S, 3] normalised, "label": int32 [B], "mask": bool [B]}; the last
    batch is padded with zeros, mask False there. Labels are 0 for unlabelled data.
  """
  process_index, process_count = _process_defaults(process_index, process_count)
  local_batch = _local_batch(int(batch_size), process_count, key="batch_size")
  source = _source(config, split)
  ds, count = _eval_local(config, source, process_index, process_count)
  if source.kind == "tfds":
    # Shards differ by at most one example; every process pads to the largest shard.
    largest = -(-source.num_examples // process_count)
  else:
    largest = max(
      hi - lo
      for lo, hi in (
        shard_bounds(source.num_examples, p, process_count) for p in range(process_count)
      )
    )
  num_batches = -(-largest // local_batch)
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE).with_options(_options(config))
  del count
  return _padded(ds.as_numpy_iterator(), local_batch, num_batches, int(config.dataset.image_size))


def _padded(batches, local_batch: int, num_batches: int, size: int):
  produced = 0
  for image, label in batches:
    n = len(label)
    mask = np.zeros(local_batch, bool)
    mask[:n] = True
    if n < local_batch:
      image = np.concatenate([image, np.zeros((local_batch - n, *image.shape[1:]), image.dtype)])
      label = np.concatenate([label, np.zeros(local_batch - n, label.dtype)])
    produced += 1
    yield {"image": image, "label": label, "mask": mask}
  for _ in range(num_batches - produced):
    yield {
      "image": np.zeros((local_batch, size, size, 3), np.float32),
      "label": np.zeros(local_batch, np.int32),
      "mask": np.zeros(local_batch, bool),
    }


def load_labelled_arrays(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole labelled split in memory, with evaluation preprocessing (small datasets).

  Returns:
    (images float32 [N, S, S, 3] normalised by config.augment.mean / std, labels int32 [N]).

  Raises:
    ValueError: when the split has no labels.
  """
  source = _source(config, split)
  if not source.has_labels:
    raise ValueError(f"split {split!r} of {config.dataset.name!r} has no labels.")
  images, labels = [], []
  for batch in create_eval_iterator(
    config, split, batch_size=512, process_index=0, process_count=1
  ):
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  return np.concatenate(images), np.concatenate(labels)
