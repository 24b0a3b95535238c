"""Standalone evaluation of a saved backbone: the "linear", "knn" and "semisup" modes of
`python -m barlow_jax.evaluate` (each writes results.json + results.md into the workdir).
"""

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import ml_collections

from barlow_jax import models, parallel
from barlow_jax.evaluation.features import (
  array_batches,
  load_backbone,
  load_labelled_splits,
  round_to,
  split_features,
)
from barlow_jax.evaluation.final_table import write_results
from barlow_jax.evaluation.finetune import (
  classifier_accuracy,
  crop_flip_kwargs,
  finetune,
  random_batches,
  select_subset,
)
from barlow_jax.evaluation.knn import knn_accuracy, knn_kwargs_from_config
from barlow_jax.evaluation.linear_probe import (
  linear_probe_accuracy,
  probe_kwargs_from_config,
  reference_linear_probe,
)


def _num_classes(config: ml_collections.ConfigDict) -> int:
  """Label classes of the probe split; ValueError naming `config.dataset.label_key` if none."""
  from barlow_jax.data import sources

  num = sources.num_classes(config, config.dataset.probe_split)
  if not num:
    raise ValueError(f"config.dataset.label_key={config.dataset.label_key!r} is not a class label")
  return num


def linear_evaluation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Linear probe (and kNN on the "features" protocol) of `config.eval.backbone`; writes results."""
  mesh = parallel.create_mesh()
  backbone, variables, model_config = load_backbone(
    config.eval.backbone, checkpoint_step=int(config.eval.checkpoint_step)
  )
  protocol = config.eval.probe_protocol
  if protocol == "auto":
    from barlow_jax.data import sources

    protocol = "features" if sources.fits_in_memory(config.dataset.name) else "reference"
  if protocol not in ("features", "reference"):
    raise ValueError(
      f"config.eval.probe_protocol={protocol!r}: use 'auto', 'features' or 'reference'"
    )
  results: dict[str, Any] = {
    "mode": "linear",
    "protocol": protocol,
    "backbone_path": _location(config.eval.backbone),
    "backbone": str(model_config.backbone),
    "dataset": config.dataset.name,
    **{f"probe_{k}": v for k, v in probe_kwargs_from_config(config).items()},
  }
  if protocol == "features":
    results.update(
      _features_evaluation(config, backbone, variables, parallel.local_mesh(), knn_only=False)
    )
  else:
    results.update(
      reference_linear_probe(
        config, backbone, variables, num_classes=_num_classes(config), mesh=mesh
      )
    )
  write_results(workdir, results)
  return results


def _features_evaluation(config, backbone, variables, mesh, *, knn_only):
  data = load_labelled_splits(config)
  train_y, test_y, num_classes = data.train_y, data.test_y, data.num_classes
  ftr, fte = split_features(backbone, variables, data, mesh=mesh)
  out = {
    "num_train": len(ftr),
    "num_eval": len(fte),
    "knn_top1": knn_accuracy(
      ftr, train_y, fte, test_y, num_classes=num_classes, **knn_kwargs_from_config(config)
    ),
  }
  if not knn_only:
    lin = linear_probe_accuracy(
      ftr, train_y, fte, test_y, num_classes=num_classes, **probe_kwargs_from_config(config)
    )
    out.update(top1=lin["top1"], top5=lin["top5"], train_top1=lin["train_top1"])
  return out


def knn_evaluation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Weighted kNN top-1 of `config.eval.backbone` (whole splits held in memory); writes results."""
  backbone, variables, model_config = load_backbone(
    config.eval.backbone, checkpoint_step=int(config.eval.checkpoint_step)
  )
  results = {
    "mode": "knn",
    "backbone_path": _location(config.eval.backbone),
    "backbone": str(model_config.backbone),
    "dataset": config.dataset.name,
    "knn_k": int(config.eval.knn_k),
    "knn_temperature": float(config.eval.knn_temperature),
    **_features_evaluation(config, backbone, variables, parallel.local_mesh(), knn_only=True),
  }
  write_results(workdir, results)
  return results


def semisup_evaluation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fine-tunes `config.eval.backbone` + a linear head on a labelled subset; writes results.

  The subset: `config.eval.semisup_subset` "1pct" / "10pct" streams TFDS
  `imagenet2012_subset/<subset>` (the SimCLR lists; crop + flip augmentation through the input
  pipeline) and evaluates on `config.dataset.eval_split` of `config.dataset.name`; "" takes
  `semisup_fraction` of `config.dataset.probe_split` of an in-memory dataset with
  `select_subset` (seed `semisup_seed`, class-balanced if `semisup_balanced`), augmented on the
  devices with crop + flip (view A's crop settings), evaluated on `eval_split`.
  """
  mesh = parallel.create_mesh()
  backbone, variables, model_config = load_backbone(
    config.eval.backbone, checkpoint_step=int(config.eval.checkpoint_step)
  )
  ev = config.eval
  if config.dataset.probe_split == config.dataset.eval_split:
    raise ValueError(
      "config.dataset.probe_split and eval_split are the same split: the labelled subset would "
      "overlap the evaluation data"
    )
  results: dict[str, Any] = {
    "mode": "semisup",
    "backbone_path": _location(ev.backbone),
    "backbone": str(model_config.backbone),
    "dataset": config.dataset.name,
    **{k: v for k, v in ev.to_dict().items() if k.startswith("semisup_")},
  }
  eval_bs = round_to(int(ev.semisup_batch_size), mesh.size)
  if ev.semisup_subset:
    data = _imagenet_subset(config, eval_bs)
  else:
    data = _labelled_fraction(config, eval_bs, num_devices=mesh.size)
    mesh = parallel.local_mesh()
  results["num_labelled"] = data.num_labelled
  trained, info = finetune(
    backbone,
    variables,
    data.batches,
    num_classes=data.num_classes,
    num_steps=data.steps,
    batch_size=data.batch_size,
    augment=data.augment,
    lr_backbone=float(ev.semisup_lr_backbone),
    lr_head=float(ev.semisup_lr_head),
    momentum=0.9,
    weight_decay=float(ev.semisup_weight_decay),
    seed=int(ev.semisup_seed),
    mesh=mesh,
  )
  model = models.Classifier(backbone=backbone, num_classes=data.num_classes)
  results.update(classifier_accuracy(model, trained, data.eval_batches, mesh=mesh))
  results.update(steps=info["steps"], seconds=info["seconds"], batch_size=data.batch_size)
  write_results(workdir, results)
  return results


@dataclasses.dataclass(frozen=True)
class _SemisupData:
  """What `finetune` and `classifier_accuracy` take for one labelled subset."""

  batches: Iterator[dict[str, Any]]
  eval_batches: Iterator[dict[str, Any]]
  num_classes: int
  num_labelled: int
  batch_size: int
  steps: int
  augment: dict[str, Any] | None  # None: the batches come augmented.


def _imagenet_subset(config: ml_collections.ConfigDict, eval_bs: int) -> _SemisupData:
  """TFDS `imagenet2012_subset/<config.eval.semisup_subset>`, crop + flip in the pipeline."""
  from barlow_jax import data

  ev = config.eval
  subset = ev.semisup_subset
  if subset not in ("1pct", "10pct"):
    raise ValueError(f"config.eval.semisup_subset={subset!r}: use '1pct', '10pct' or ''")
  batch_size = int(ev.semisup_batch_size)
  train_config = data.crop_flip_config(
    config, split="train", batch_size=batch_size, name=f"imagenet2012_subset/{subset}"
  )
  steps = int(ev.semisup_epochs) * data.steps_per_epoch(train_config)
  num_classes = _num_classes(config)
  batches = data.labelled_view_a(data.create_pretrain_iterator(train_config), train_config)
  eval_batches = data.create_eval_iterator(config, config.dataset.eval_split, batch_size=eval_bs)
  num_labelled = data.num_train_examples(train_config)
  return _SemisupData(batches, eval_batches, num_classes, num_labelled, batch_size, steps, None)


def _labelled_fraction(
  config: ml_collections.ConfigDict, eval_bs: int, *, num_devices: int
) -> _SemisupData:
  """`config.eval.semisup_fraction` of an in-memory probe split, crop + flip on the devices."""
  from barlow_jax.data import sources

  ev = config.eval
  if not sources.fits_in_memory(config.dataset.name):
    raise ValueError(
      f"config.eval.semisup_subset='' (a fraction) needs an in-memory dataset, not "
      f"{config.dataset.name!r}: use semisup_subset='1pct'/'10pct' for ImageNet"
    )
  data = load_labelled_splits(config)
  train_x, train_y, num_classes = data.train_x, data.train_y, data.num_classes
  idx = select_subset(
    train_y,
    fraction=float(ev.semisup_fraction),
    seed=int(ev.semisup_seed),
    balanced=bool(ev.semisup_balanced),
  )
  batch_size = round_to(min(int(ev.semisup_batch_size), len(idx)), num_devices)
  steps = max(1, int(ev.semisup_epochs) * (len(idx) // batch_size))
  batches = random_batches(train_x[idx], train_y[idx], batch_size, seed=int(ev.semisup_seed))
  eval_batches = array_batches(data.test_x, data.test_y, eval_bs)
  augment = crop_flip_kwargs(config.augment.view_a)
  return _SemisupData(batches, eval_batches, num_classes, len(idx), batch_size, steps, augment)


def _location(path: str) -> str:
  """`path` absolute (local) or as given (gs://...), for the results' `backbone_path`."""
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))
