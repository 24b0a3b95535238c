"""The evaluation pipeline (tf.data): resize, centre crop and normalise, one pass in a fixed order.

Every process yields the same number of batches (the last ones padded and masked), so the
trainer can assemble global arrays from process-local batches.
"""

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from barlow_jax.data import batching, colour, crop, sources


def eval_resize(config) -> int | None:
  """Short side the eval images are resized to before the centre crop, or None (plain resize).

  ImageNet-sized inputs (image_size >= 128) use `config.dataset.eval_resize` (256 for 224 crops,
  the reference's `Resize(256)`; 0 = none); small images are resized straight to image_size
  (scaled up or down; a no-op when they already have that size).

  Raises:
    ValueError: naming `config.dataset.eval_resize` when it is below `config.dataset.image_size`
      (the centre crop would not fit), or `config.dataset.image_size` when it is below 1.
  """
  return _checked_resize(int(config.dataset.image_size), int(config.dataset.eval_resize))


def _checked_resize(size: int, resize: int) -> int | None:
  if size < 1:
    raise ValueError(f"config.dataset.image_size={size}: must be >= 1 (the crop side in pixels).")
  if size < 128 or resize <= 0:
    return None
  if resize < size:
    raise ValueError(
      f"config.dataset.eval_resize={resize} is below config.dataset.image_size={size}: the "
      f"centre {size}x{size} crop would not fit. Set it >= {size} (the reference's ratio: "
      f"{size * 256 // 224}) or 0 to resize straight to {size}x{size}."
    )
  return resize


def eval_preprocessing(config) -> tuple[int, int | None, str]:
  """(crop size, `eval_resize(config)`, resize method) of the evaluation pipeline, checked.

  Needs no data: call it at the start of a run so that a setting the evaluation cannot work
  with fails there, not after pretraining.

  Raises:
    ValueError: naming the config key (`dataset.image_size`, `dataset.eval_resize`,
      `dataset.eval_interpolation`) of a setting the evaluation cannot work with.
  """
  dataset = config.dataset
  return preprocessing(
    int(dataset.image_size), int(dataset.eval_resize), str(dataset.eval_interpolation)
  )


def preprocessing(
  image_size: int, eval_resize: int, eval_interpolation: str
) -> tuple[int, int | None, str]:
  """`eval_preprocessing` of the values it reads (`config.dataset.image_size`, `eval_resize`,
  `eval_interpolation`), for a caller that read them once; raises the same errors."""
  resize = _checked_resize(int(image_size), int(eval_resize))
  method = crop.check_resize_method(str(eval_interpolation), "config.dataset.eval_interpolation")
  return int(image_size), resize, method


def _eval_local(config, source, process_index, process_count) -> tf.data.Dataset:
  """The process's shard, preprocessed: dataset of (image [S, S, 3] normalised, label)."""
  size, resize, method = eval_preprocessing(config)
  mean, std = tuple(config.augment.mean), tuple(config.augment.std)
  stream = source.eval_stream(process_index=process_index, process_count=process_count)

  def load(*element):
    image, label = stream.load(*element)
    image = crop.eval_resize_crop(image, size=size, resize=resize, method=method)
    return colour.normalize(image, mean, std), tf.cast(label, tf.int32)

  return stream.dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)


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
  process_index, process_count = batching.process_defaults(process_index, process_count)
  local_batch = batching.local_batch(int(batch_size), process_count, key="batch_size")
  eval_preprocessing(config)  # Bad settings fail before the source opens.
  source = sources.open_source(config, split)
  ds = _eval_local(config, source, process_index, process_count)
  # Shards (even splits, or tfds.split_for_jax_process's) differ by at most one example: every
  # process pads to the largest.
  largest = -(-source.num_examples // process_count)
  num_batches = -(-largest // local_batch)
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE).with_options(batching.options())
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
  eval_preprocessing(config)
  source = sources.open_source(config, split)
  if not source.has_labels:
    raise ValueError(f"split {split!r} of {config.dataset.name!r} has no labels.")
  images, labels = [], []
  for batch in create_eval_iterator(
    config, split, batch_size=512, process_index=0, process_count=1
  ):
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  return np.concatenate(images), np.concatenate(labels)
