"""Transfer of a frozen backbone to other datasets (Barlow Twins paper, Sec. 4, Table 3).

`python -m barlow_jax.evaluate --config=configs/eval_transfer.py:DATASET` (mode "transfer"):
the backbone (`config.eval.backbone`: a pretraining workdir, a `backbone/` export or converted
PyTorch weights) gives eval-mode features of both splits once, with the evaluation preprocessing
(`config.dataset.eval_resize` short side, centre `image_size` crop, `config.augment` mean / std),
then

- `config.transfer.task == "single_label"`: the linear probe of `barlow_jax.evaluate` on the
  features (standardised; SGD momentum, `config.eval.probe_*`), top-1 / top-5 on
  `config.dataset.eval_split`;
- `"multi_label"` (VOC-style TFDS data): an image's targets are the classes of its objects
  (`config.transfer.objects_key`), a class whose objects are all difficult is "difficult" (-1);
  per-class linear SVMs with the cost cross-validated on `probe_split`, mAP on `eval_split`
  (`barlow_jax.evaluation.voc07`).

Results go to WORKDIR/results.json and results.md, with the paper's number beside when the
dataset is one of Table 3's.
"""

import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from barlow_jax import parallel
from barlow_jax.evaluation import voc07
from barlow_jax.evaluation.features import extract_features, load_backbone
from barlow_jax.evaluation.final_table import write_results
from barlow_jax.evaluation.linear_probe import linear_probe_accuracy, probe_kwargs_from_config

TASKS = ("single_label", "multi_label")

# Barlow Twins paper, Table 3 (ResNet-50, linear on frozen features), keyed by TFDS name:
# (what the paper measured, metric key of the results, value in [0, 1]).
PUBLISHED = {
  "places365_small": ("Places-205 top-1; Places-365 here is its TFDS stand-in", "top1", 0.541),
  "i_naturalist2018": ("iNaturalist-2018 top-1", "top1", 0.465),
  "voc/2007": ("VOC07 mAP, linear SVMs", "map", 0.862),
}


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key when `config.transfer` / the splits cannot work."""
  t = config.transfer
  if t.task not in TASKS:
    raise ValueError(f"config.transfer.task={t.task!r}: use one of {TASKS}")
  if not config.dataset.probe_split or not config.dataset.eval_split:
    raise ValueError("config.dataset.probe_split (train) and eval_split (test) must both be set")
  if config.dataset.probe_split == config.dataset.eval_split:
    raise ValueError(
      f"config.dataset.probe_split and eval_split are both {config.dataset.eval_split!r}: the "
      "classifier would be tested on its training images"
    )
  if int(t.batch_size) < 1:
    raise ValueError(f"config.transfer.batch_size must be >= 1, got {t.batch_size}")
  if t.task == "multi_label":
    from barlow_jax.data import sources

    if sources.source_kind(config.dataset.name) != "tfds":
      raise ValueError(
        f"config.transfer.task='multi_label' reads a TFDS dataset with per-object labels "
        f"(e.g. voc/2007), not {config.dataset.name!r}"
      )
    if not t.svm_costs or min(t.svm_costs) <= 0:
      raise ValueError(f"config.transfer.svm_costs must be positive numbers, got {t.svm_costs}")
    if int(t.svm_folds) < 2:
      raise ValueError(f"config.transfer.svm_folds must be >= 2, got {t.svm_folds}")
    _objects_features(config)  # The per-object keys, from the dataset's metadata alone.


# ---------------------------------------------------------------------------------------------
# Multi-label (VOC-style) examples.


def _objects_features(config):
  import tensorflow_datasets as tfds

  t = config.transfer
  try:
    builder = tfds.builder(config.dataset.name, data_dir=config.dataset.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"config.dataset.name={config.dataset.name!r} is not a TFDS dataset") from None
  features = builder.info.features
  if t.objects_key not in features:
    raise ValueError(
      f"config.transfer.objects_key={t.objects_key!r} is not a feature of "
      f"{config.dataset.name!r} (features: {sorted(features.keys())})"
    )
  objects = features[t.objects_key].feature
  keys = [t.object_label_key] + ([t.object_difficult_key] if t.object_difficult_key else [])
  for key in keys:
    if key not in objects:
      raise ValueError(
        f"config.transfer: {key!r} is not a field of {t.objects_key!r} (fields: "
        f"{sorted(objects.keys())}); set object_label_key / object_difficult_key"
      )
  names = list(getattr(objects[t.object_label_key], "names", None) or [])
  if not names:
    raise ValueError(f"{t.objects_key}/{t.object_label_key} is not a class label")
  return builder, names


def multilabel_targets(labels, difficult, num_classes: int):
  """Per-object class ids [K] and difficult flags [K] -> targets [num_classes] int32 (tf).

  1 where some object of the class is not difficult, -1 where all its objects are difficult
  (the VOC devkit's "difficult" image), 0 where the class has no object.
  """
  import tensorflow as tf

  check = tf.debugging.assert_equal(
    tf.size(labels),
    tf.size(difficult),
    message="an image's objects have as many difficult flags as labels "
    "(config.transfer.object_label_key / object_difficult_key)",
  )
  with tf.control_dependencies([check]):
    onehot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.int32)  # [K, C]
  easy = tf.cast(tf.logical_not(tf.cast(difficult, tf.bool)), tf.int32)[:, None]
  any_object = tf.reduce_sum(onehot, axis=0) > 0
  any_easy = tf.reduce_sum(onehot * easy, axis=0) > 0
  return tf.where(any_easy, 1, tf.where(any_object, -1, 0))


def multilabel_batches(
  config: ml_collections.ConfigDict, split: str, *, batch_size: int
) -> tuple[Iterator[dict[str, np.ndarray]], list[str]]:
  """One pass over a VOC-style TFDS split with the evaluation preprocessing.

  Returns:
    (iterator of {"image": float32 [B, S, S, 3] normalised, "label": int32 [B, C] targets in
    {1, 0, -1}, "mask": bool [B]} with the last batch padded (mask False), the C class names).
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from barlow_jax.data import colour, crop, evaluation

  builder, names = _objects_features(config)
  t, image_key = config.transfer, config.dataset.image_key
  size, resize, method = evaluation.eval_preprocessing(config)
  mean, std = tuple(config.augment.mean), tuple(config.augment.std)
  ds = builder.as_dataset(
    split=split,
    decoders={image_key: tfds.decode.SkipDecoding()},
    shuffle_files=False,
    read_config=tfds.ReadConfig(try_autocache=False),
  )

  def prepare(ex):
    image = crop.decode_image(ex[image_key])
    image = crop.eval_resize_crop(image, size=size, resize=resize, method=method)
    objects = ex[t.objects_key]
    labels = objects[t.object_label_key]
    difficult = objects[t.object_difficult_key] if t.object_difficult_key else tf.zeros_like(labels)
    targets = multilabel_targets(labels, difficult, len(names))
    return colour.normalize(image, mean, std), targets

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)

  def batches():
    for image, label in ds.as_numpy_iterator():
      n = len(label)
      pad = batch_size - n
      yield {
        "image": np.pad(image, [(0, pad), (0, 0), (0, 0), (0, 0)]),
        "label": np.pad(label, [(0, pad), (0, 0)]),
        "mask": np.arange(batch_size) < n,
      }

  return batches(), names


# ---------------------------------------------------------------------------------------------
# The evaluation.


def _features(config, backbone, variables, split: str, mesh: Mesh):
  """(features [N, F], labels [N] or targets [N, C], class names or None) of one split."""
  from barlow_jax import data

  batch_size = int(config.transfer.batch_size)
  names = None
  if config.transfer.task == "multi_label":
    batches, names = multilabel_batches(config, split, batch_size=batch_size)
  else:
    batches = data.create_eval_iterator(
      config, split, batch_size=batch_size, process_index=0, process_count=1
    )
  features, labels = extract_features(backbone, variables, batches, mesh=mesh)
  return features, labels, names


def _num_classes(config, *labels) -> int:
  from barlow_jax.data import sources

  num = sources.num_classes(config, config.dataset.probe_split)
  return max(num, *(int(y.max()) + 1 for y in labels))


def _preprocessing(config) -> str:
  from barlow_jax import data

  size, resize = int(config.dataset.image_size), data.eval_resize(config)
  if resize is None:
    return f"resized to {size}x{size}"
  return f"short side resized to {resize}, centre {size}x{size} crop"


def svm_kwargs_from_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config.transfer.svm_*` as keyword arguments of `voc07.svm_evaluation`."""
  t = config.transfer
  return dict(
    costs=tuple(float(c) for c in t.svm_costs),
    folds=int(t.svm_folds),
    positive_weight=float(t.svm_positive_weight),
    max_iter=int(t.svm_max_iter),
    n_jobs=int(t.svm_jobs),
    seed=int(config.seed),
  )


def transfer_evaluation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Frozen-feature transfer of `config.eval.backbone` to `config.dataset`; writes results.

  Returns:
    The results dict written to WORKDIR/results.json (see the module docstring).
  """
  validate_config(config)
  backbone, variables, model_config = load_backbone(
    config.eval.backbone, checkpoint_step=int(config.eval.checkpoint_step)
  )
  mesh = parallel.local_mesh()
  t0 = time.perf_counter()
  train_f, train_y, names = _features(config, backbone, variables, config.dataset.probe_split, mesh)
  test_f, test_y, _ = _features(config, backbone, variables, config.dataset.eval_split, mesh)
  extract_seconds = time.perf_counter() - t0
  task = config.transfer.task
  results: dict[str, Any] = {
    "mode": "transfer",
    "task": task,
    "dataset": config.dataset.name,
    "train_split": config.dataset.probe_split,
    "test_split": config.dataset.eval_split,
    "backbone_path": os.path.abspath(config.eval.backbone),
    "backbone": str(model_config.backbone),
    "preprocessing": _preprocessing(config),
    "num_train": len(train_f),
    "num_eval": len(test_f),
    "feature_dim": int(train_f.shape[1]),
    "extract_seconds": extract_seconds,
  }
  t0 = time.perf_counter()
  if task == "single_label":
    num_classes = _num_classes(config, train_y, test_y)
    probe = probe_kwargs_from_config(config)
    results.update(num_classes=num_classes, **{f"probe_{k}": v for k, v in probe.items()})
    results.update(
      linear_probe_accuracy(train_f, train_y, test_f, test_y, num_classes=num_classes, **probe)
    )
  else:
    svm = svm_kwargs_from_config(config)
    results.update(num_classes=len(names), class_names=names)
    results.update({f"svm_{k}": v for k, v in svm.items() if k != "costs"})
    results["svm_candidate_costs"] = list(svm["costs"])
    results.update(voc07.svm_evaluation(train_f, train_y, test_f, test_y, **svm))
  results["classifier_seconds"] = time.perf_counter() - t0
  if config.dataset.name in PUBLISHED:
    what, metric, value = PUBLISHED[config.dataset.name]
    results["published"] = {"what": what, "metric": metric, "value": value}
  write_results(workdir, results, text=transfer_markdown(results))
  return results


def transfer_markdown(results: Mapping[str, Any]) -> str:
  """results.md of a transfer run: the scores (percent), the paper's beside, the settings."""
  r = results
  lines = [
    f"Transfer of {r['backbone']} ({r['backbone_path']}) to {r['dataset']}: train on "
    f"{r['train_split']!r} ({r['num_train']} images), test on {r['test_split']!r} "
    f"({r['num_eval']} images), {r['num_classes']} classes; {r['feature_dim']}-d features of "
    f"images {r['preprocessing']}.",
    "",
  ]
  published = r.get("published")
  paper = lambda metric: (
    f"{100 * published['value']:.1f} ({published['what']})"
    if published and published["metric"] == metric
    else "-"
  )
  if r["task"] == "single_label":
    lines += [
      "| metric | this run | Barlow Twins paper, Table 3 |",
      "|---|---|---|",
      f"| linear top-1 | {100 * r['top1']:.1f} | {paper('top1')} |",
      f"| linear top-5 | {100 * r['top5']:.1f} | - |",
      f"| linear top-1 on the training features | {100 * r['train_top1']:.1f} | - |",
      "",
      f"Linear probe on standardised features: {r['probe_epochs']} epochs, batch "
      f"{r['probe_batch_size']}, lr {r['probe_lr']} per 256, momentum {r['probe_momentum']}, "
      f"wd {r['probe_weight_decay']}, cosine.",
    ]
  else:
    lines += [
      "| metric | this run | Barlow Twins paper, Table 3 |",
      "|---|---|---|",
      f"| mAP, all-point AP (the benchmark's) | {100 * r['map']:.1f} | {paper('map')} |",
      f"| mAP, 11-point AP (VOC2007 devkit) | {100 * r['map_11_point']:.1f} | - |",
      f"| mAP, uninterpolated AP (sklearn) | {100 * r['map_uninterpolated']:.1f} | - |",
      "",
      "| class | AP (all-point) | AP (11-point) | cost C | CV AP |",
      "|---|---|---|---|---|",
    ]
    for i, name in enumerate(r["class_names"]):
      ap, ap11 = r["ap"][i], r["ap_11_point"][i]
      cell = lambda v: "n/a (no positive)" if v is None else f"{100 * v:.1f}"
      lines.append(
        f"| {name} | {cell(ap)} | {cell(ap11)} | {r['costs'][i]:.3g} | {100 * r['cv_ap'][i]:.1f} |"
      )
    lines += [
      "",
      f"Per-class linear SVMs on L2-normalised features: cost by {r['svm_folds']}-fold "
      f"cross-validated AP over {len(r['svm_candidate_costs'])} candidates, positive weight "
      f"{r['svm_positive_weight']}, max_iter {r['svm_max_iter']}; difficult images are negatives "
      "in training and left out of the test AP.",
    ]
  lines.append(
    f"Feature extraction {r['extract_seconds']:.0f} s, classifier {r['classifier_seconds']:.0f} s."
  )
  return "\n".join(lines) + "\n"
