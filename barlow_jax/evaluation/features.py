"""Frozen backbones: building, reading (through `barlow_jax.checkpointing`), features, and the
classification metrics the protocols share (`topk_accuracy`, `topk_counts`).

A backbone is a flax module plus its variables `{"params", "batch_stats"}` (eval-mode BatchNorm);
`load_backbone` reads one from a pretraining workdir, a `backbone/` export or a converted PyTorch
checkpoint. Batches reach the devices through `barlow_jax.parallel`.
"""

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from barlow_jax import checkpointing, parallel


def backbone_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  """`{"params", "batch_stats"}` of the backbone, from full BarlowTwins or backbone variables."""
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  if "backbone" in params:
    params = params["backbone"]
    stats = stats.get("backbone", {}) if stats else {}
  return {"params": params, "batch_stats": stats}


def create_backbone(model_config: ml_collections.ConfigDict) -> nn.Module:
  """The backbone module (ResNet) of `config.model`, without the projector."""
  from barlow_jax import models

  return models.create_model(model_config).backbone


def init_backbone(backbone: nn.Module, image_size: int, seed: int) -> dict[str, Any]:
  """Random-init variables of `backbone` (the model's own initialisers; BN stats 0 / 1)."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  # Jitted: eager init of a ResNet dispatches op by op and takes seconds on a CPU.
  variables = jax.jit(functools.partial(backbone.init, train=False))(jax.random.PRNGKey(seed), x)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


@functools.lru_cache(maxsize=8)
def _apply_features(backbone: nn.Module):
  # Cached per (hashable) module so repeated extractions reuse one compiled function.
  @jax.jit
  def fn(variables, images):
    return backbone.apply(variables, images, train=False).astype(jnp.float32)

  return fn


def extract_features(
  backbone: nn.Module,
  variables: Mapping[str, Any],
  batches: Iterable[Mapping[str, np.ndarray]],
  *,
  mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Representations of every example of a one-pass iterator, with eval-mode BatchNorm.

  Args:
    backbone: a module whose `apply(variables, images, train=False)` gives [B, F] features (the
      ResNet backbone; for a full BarlowTwins model pass `model.backbone` and
      `backbone_variables(vars)`).
    variables: its `{"params", "batch_stats"}`.
    batches: dicts with "image" [B, S, S, 3] float, "label" [B] int and optionally "mask" [B]
      bool (False on padding, dropped from the output).
    mesh: batches are sharded over its "data" axis when B divides by its size (default: all
      devices); variables are replicated.

  Returns:
    (features float32 [N, F], labels int32 [N]) as NumPy arrays.
  """
  mesh = parallel.create_mesh() if mesh is None else mesh
  variables = parallel.put_replicated(backbone_variables(variables), mesh)
  fn = _apply_features(backbone)
  feats, labels = [], []
  for batch in batches:
    images = np.asarray(batch["image"], np.float32)
    shard = mesh if len(images) % mesh.size == 0 else None
    out = parallel.to_host(fn(variables, parallel.shard_batch(images, shard)))
    mask = np.asarray(batch.get("mask", np.ones(len(images), bool)), bool)
    feats.append(out[mask])
    labels.append(np.asarray(batch["label"]).astype(np.int32)[mask])
  if not feats:
    raise ValueError("extract_features got an empty iterator")
  return np.concatenate(feats), np.concatenate(labels)


def array_batches(
  images: np.ndarray, labels: np.ndarray, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over in-memory arrays in eval batches, the last padded (mask False on padding)."""
  n = len(images)
  for start in range(0, n, batch_size):
    img = images[start : start + batch_size]
    lab = labels[start : start + batch_size]
    mask = np.ones(len(img), bool)
    if len(img) < batch_size:
      pad = batch_size - len(img)
      img = np.concatenate([img, np.zeros((pad, *img.shape[1:]), img.dtype)])
      lab = np.concatenate([lab, np.zeros((pad,), lab.dtype)])
      mask = np.concatenate([mask, np.zeros((pad,), bool)])
    yield {"image": img, "label": lab, "mask": mask}


@dataclasses.dataclass(frozen=True)
class LabelledSplits:
  """An in-memory labelled dataset: images [N, S, S, 3] float32, labels [N] int32 per split."""

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int  # The largest label of either split + 1.


def load_labelled_splits(config: ml_collections.ConfigDict) -> LabelledSplits:
  """`config.dataset.probe_split` (train) and `eval_split` (test) of an in-memory dataset."""
  from barlow_jax import data

  train_x, train_y = data.load_labelled_arrays(config, config.dataset.probe_split)
  test_x, test_y = data.load_labelled_arrays(config, config.dataset.eval_split)
  train_y, test_y = np.asarray(train_y, np.int32), np.asarray(test_y, np.int32)
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  return LabelledSplits(train_x, train_y, test_x, test_y, num_classes)


def split_features(
  backbone: nn.Module, variables: Mapping[str, Any], data: LabelledSplits, *, mesh: Mesh
) -> tuple[np.ndarray, np.ndarray]:
  """(train [N, F], test [M, F]) float32 features of both splits (`extract_features`)."""
  batch_size = eval_batch_size(len(data.train_x), mesh.size)
  out = []
  for images, labels in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
    batches = array_batches(images, labels, batch_size)
    out.append(extract_features(backbone, variables, batches, mesh=mesh)[0])
  return out[0], out[1]


def topk_accuracy(logits: jax.Array, labels: jax.Array, k: int, mask: jax.Array | None = None):
  """Fraction of examples whose label is among the k largest logits.

  Args:
    logits: [N, C] scores.
    labels: [N] int class ids in [0, C).
    k: 1 <= k <= C.
    mask: optional [N] bool; False rows (padding) are ignored.

  Returns:
    A float32 scalar in [0, 1] (0 when every row is masked).
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"logits must be [N, C] and labels [N], got {logits.shape}, {labels.shape}")
  if not 1 <= k <= logits.shape[1]:
    raise ValueError(f"k must be in [1, {logits.shape[1]}] (number of classes), got {k}")
  _, top = jax.lax.top_k(logits, k)
  hit = jnp.any(top == labels[:, None], axis=1).astype(jnp.float32)
  if mask is None:
    return jnp.mean(hit)
  mask = jnp.asarray(mask, jnp.float32)
  return jnp.sum(hit * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def topk_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """[3] float32 (top-1 hits, top-5 hits, examples) of the unmasked rows of one batch.

  Top-5 is top-C when there are fewer than 5 classes. Summed over batches, hits / examples are
  the accuracies (`accuracy_over_batches`).
  """
  n = jnp.sum(jnp.asarray(mask).astype(jnp.float32))
  k5 = min(5, jnp.shape(logits)[-1])
  top1 = topk_accuracy(logits, labels, 1, mask) * n
  top5 = topk_accuracy(logits, labels, k5, mask) * n
  return jnp.stack([top1, top5, n])


def accuracy_over_batches(
  counts: Callable[[dict[str, jax.Array]], jax.Array],
  batches: Iterable[Mapping[str, np.ndarray]],
  *,
  mesh: Mesh,
  what: str,
) -> dict[str, float]:
  """Top-1 / top-5 over one pass of eval batches.

  Args:
    counts: `counts(batch) -> topk_counts(...)` of a batch {"image" [B, S, S, 3] float32,
      "label" [B] int32, "mask" [B] bool}, sharded over `mesh` when B divides by its size.
    batches: dicts with "image", "label" and optionally "mask" (False on padding).
    what: names the caller in the error.

  Returns:
    {"top1", "top5"} as Python floats.

  Raises:
    ValueError: no unmasked example.
  """
  total = np.zeros(3)
  for b in batches:
    arrays = {
      "image": np.asarray(b["image"], np.float32),
      "label": np.asarray(b["label"]).astype(np.int32),
      "mask": np.asarray(b.get("mask", np.ones(len(b["image"]), bool)), bool),
    }
    shard = mesh if len(arrays["image"]) % mesh.size == 0 else None
    total += parallel.to_host(counts(parallel.shard_batch(arrays, shard)))
  if total[2] == 0:
    raise ValueError(f"{what}: no examples")
  return {"top1": float(total[0] / total[2]), "top5": float(total[1] / total[2])}


def eval_batch_size(n: int, num_devices: int, preferred: int = 256) -> int:
  """Eval batch for `n` examples: at most `preferred`, a multiple of `num_devices`."""
  size = min(preferred, max(n, 1))
  return max(num_devices, int(math.ceil(size / num_devices)) * num_devices)


def round_to(n: int, multiple: int) -> int:
  """`n` rounded down to a multiple of `multiple`, at least `multiple`."""
  return max(multiple, (n // multiple) * multiple)


def load_backbone(
  path: str, *, checkpoint_step: int = -1
) -> tuple[nn.Module, dict[str, Any], ml_collections.ConfigDict]:
  """Reads a frozen backbone from any of the places a run or a conversion leaves one.

  Finds the backbone, reads it through `checkpointing` and builds its module;
  `checkpointing.load_backbone` reads one backbone directory only.

  Args:
    path: one of
      - a backbone directory (`model_config.json` + orbax `{"params", "batch_stats"}`): a
        workdir's `backbone/` export or the output of
        `python -m barlow_jax.convert --from resnet50.pth --to DIR`;
      - a pretraining workdir: its `backbone/` export when `checkpoint_step` is -1 and the export
        exists, else the training checkpoint of `checkpoint_step` (-1: the latest).
    checkpoint_step: see above.

  Returns:
    (backbone module, its variables {"params", "batch_stats"}, the `config.model` it was built
    from).
  """

  location = checkpointing.path(path)
  path = os.fspath(location)
  if not location.is_dir():
    raise ValueError(f"config.eval.backbone={path!r} is not a directory")
  export = os.fspath(location / checkpointing.BACKBONE)
  if checkpointing.is_backbone_dir(path):
    directory = path
  elif checkpoint_step < 0 and checkpointing.is_backbone_dir(export):
    directory = export
  elif (location / checkpointing.CHECKPOINTS).is_dir():
    variables, model_config, _ = checkpointing.backbone_from_checkpoint(path, checkpoint_step)
    model_config = ml_collections.ConfigDict(model_config)
    return create_backbone(model_config), variables, model_config
  else:
    raise ValueError(
      f"config.eval.backbone={path!r} holds neither {checkpointing.MODEL_CONFIG_FILE} (a backbone "
      "export or converted PyTorch checkpoint), nor backbone/ or checkpoints/ (a pretraining "
      "workdir). Convert PyTorch weights with `python -m barlow_jax.convert --from X.pth --to DIR`."
    )
  # Host arrays: whatever device count wrote the directory, the callers place them on theirs.
  variables, model_config = checkpointing.load_backbone(directory)
  model_config = ml_collections.ConfigDict(model_config)
  return create_backbone(model_config), backbone_variables(variables), model_config
