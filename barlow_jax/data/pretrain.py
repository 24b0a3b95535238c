"""The pretraining pipeline (tf.data): two augmented uint8 views per image, sharded over processes.

TensorFlow only feeds data: the pipeline modules hide every GPU from it
(`barlow_jax.data.batching`), so it never touches an accelerator.

Order and resumability: epoch `e` visits the process's shard in an order drawn from
(config.seed, e) (`barlow_jax.data.stream`) and augments example `i` with seeds drawn from
(config.seed, e, i, view), all with stateless ops. So `create_pretrain_iterator(config,
start_step=k)` yields exactly batches k, k+1, ... of a run started at 0, skipping the first
k % steps_per_epoch batches of the epoch without decoding them. Each epoch has exactly
`steps_per_epoch(config)` batches on every process (remainders dropped, docs/reference.md §3).

The same stream with crop + flip only, view A normalised and labelled (`crop_flip_config`,
`labelled_view_a`), is the single-view labelled stream the evaluation trains its heads on.
"""

import dataclasses
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from barlow_jax.data import augment, batching, crop, evaluation, sources
from barlow_jax.data import stream as stream_lib


@dataclasses.dataclass(frozen=True)
class TwoViews:
  """The settings of the per-example map of pretraining as plain values (`two_views_of`).

  Attributes:
    seed: `config.seed` (the augmentations' seeds come from (seed, epoch, index, view)).
    image_size: the views' side S (`config.dataset.image_size`).
    on_device: `config.augment.on_device` (the colour ops then run in the train step).
    view_a, view_b: `config.augment.view_a` / `view_b` as `augment.ViewParams`.
  """

  seed: int
  image_size: int
  on_device: bool
  view_a: augment.ViewParams
  view_b: augment.ViewParams


def two_views_of(config: ml_collections.ConfigDict) -> TwoViews:
  """`TwoViews` read from `config` (`seed`, `dataset.image_size`, `augment`)."""
  views = [
    augment.ViewParams(**{key: config.augment[name][key] for key in augment.VIEW_KEYS})
    for name in ("view_a", "view_b")
  ]
  return TwoViews(
    seed=int(config.seed),
    image_size=int(config.dataset.image_size),
    on_device=bool(config.augment.on_device),
    view_a=views[0],
    view_b=views[1],
  )


def _two_views(settings: TwoViews, image, seed_a, seed_b, is_bytes: bool):
  """Crops of both views: [S, S, 3] float32 each, from bytes (any format) or a decoded image.

  Encoded images are decoded once for both views (measured on one core, 400x350 JPEGs: 1.6 ms
  for the whole image against 2 x 1.1 ms for the two crop windows through libjpeg's cropping
  decoder), with training's decoders (`crop.decode_whole`).
  """
  size = settings.image_size
  if is_bytes:
    image = crop.decode_whole(image)
  a = augment.crop_view(image, seed_a, settings.view_a, size=size)
  b = augment.crop_view(image, seed_b, settings.view_b, size=size)
  return tf.ensure_shape(a, [size, size, 3]), tf.ensure_shape(b, [size, size, 3])


def two_view_fn(config, *, is_bytes: bool, with_label: bool):
  """The per-example map of pretraining: (epoch, index, image, label) -> two uint8 views.

  `image` is encoded bytes (any format TensorFlow decodes) when `is_bytes`, else a decoded
  [H, W, 3] uint8 or [0, 1] float image. Seeds come from (config.seed, epoch, index, view).
  Each view is cropped, flipped and, unless `config.augment.on_device`, colour-augmented
  (`augment.augment_cropped`), then rounded to uint8: normalisation by `config.augment.mean` /
  `std` happens in the train step, on the accelerator. Returns {"view_a", "view_b"[, "label"]}.
  """
  return two_view_map(two_views_of(config), is_bytes=is_bytes, with_label=with_label)


def two_view_map(settings: TwoViews, *, is_bytes: bool, with_label: bool):
  """`two_view_fn` of the settings read once (`two_views_of(config)`)."""
  seed, on_device = settings.seed, settings.on_device

  def finish(cropped, view_seed, view):
    if on_device:
      return crop.to_uint8(augment.maybe_flip(cropped, view_seed, view))
    return crop.to_uint8(augment.augment_cropped(cropped, view_seed, view))

  def fn(epoch, index, image, label):
    seed_a = augment.example_seed(seed, epoch, index, 0)
    seed_b = augment.example_seed(seed, epoch, index, 1)
    crop_a, crop_b = _two_views(settings, image, seed_a, seed_b, is_bytes)
    out = {
      "view_a": finish(crop_a, seed_a, settings.view_a),
      "view_b": finish(crop_b, seed_b, settings.view_b),
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
  process_index, process_count = batching.process_defaults(process_index, process_count)
  local_batch = batching.local_batch(int(config.batch_size), process_count)
  dataset = config.dataset
  # The run's evaluation preprocessing too: a bad setting fails at the start, not after
  # pretraining.
  evaluation.preprocessing(
    int(dataset.image_size), int(dataset.eval_resize), str(dataset.eval_interpolation)
  )
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  source = sources.open_source(config, dataset.train_split)
  spe = sources.steps_per_epoch(config)
  if config.num_train_examples > source.num_examples:
    raise ValueError(
      f"config.num_train_examples={config.num_train_examples} exceeds the "
      f"{source.num_examples} examples of split {dataset.train_split!r}."
    )
  per_epoch = spe * local_batch  # Examples each process takes per epoch.
  start_epoch, skip_steps = divmod(int(start_step), spe)
  order = stream_lib.TrainOrder(
    seed=int(config.seed), shuffle_buffer=int(dataset.shuffle_buffer), cache=bool(dataset.cache)
  )
  stream = source.train_stream(
    order,
    start_epoch=start_epoch,
    skip=skip_steps * local_batch,
    per_epoch=per_epoch,
    process_index=process_index,
    process_count=process_count,
  )
  views = two_view_map(two_views_of(config), is_bytes=stream.is_bytes, with_label=source.has_labels)

  def two_view_example(*args):
    return views(*stream.load(*args))

  parallel_calls = batching.parallel_calls(int(dataset.num_parallel_calls))
  ds = stream.dataset.map(two_view_example, num_parallel_calls=parallel_calls)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(batching.options())
  return ds.as_numpy_iterator()


def crop_flip_config(
  config: ml_collections.ConfigDict, *, split: str, batch_size: int, name: str | None = None
) -> ml_collections.ConfigDict:
  """`config` whose pretraining stream yields the probe's training augmentation in view A: with
  `labelled_view_a`, the single-view labelled stream of the linear probe's reference protocol and
  the semi-supervised fine-tuning.

  Random resized crop (the configured area / aspect / method) + flip, nothing else: colour
  jitter, grayscale, blur, solarize, channel permutation and noise are switched off.
  """
  out = ml_collections.ConfigDict(config.to_dict())
  out.dataset.train_split = split
  if name is not None:
    out.dataset.name = name
  out.batch_size = int(batch_size)
  out.num_train_examples = -1
  off = ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob", "channel_permute_prob")
  for view in (out.augment.view_a, out.augment.view_b):
    for key in (*off, "noise_std"):
      view[key] = 0.0
  return out


def labelled_view_a(iterator, config):
  """Pretraining batches -> {"image": normalised view A, "label"}; raises without labels.

  Args:
    iterator: `create_pretrain_iterator(config)` of a `crop_flip_config` config.
    config: that config.

  Yields:
    {"image": [B, S, S, 3] float32 (normalised), "label": [B] int}.

  Raises:
    ValueError: naming config.dataset.label_key when a batch has no labels.
  """
  for batch in iterator:
    if "label" not in batch:
      raise ValueError("the training split has no labels (config.dataset.label_key)")
    # The pretraining stream's views are uint8; the probe's network takes normalised floats.
    yield {
      "image": normalize_views(batch, config)["view_a"],
      "label": batch["label"],
    }
