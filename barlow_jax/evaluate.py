"""Evaluation: kNN monitor, linear probe, semi-supervised fine-tuning and the default job's table.

REFERENCE.md §5 gives the protocols. Everything here reads a frozen backbone as a flax module plus
its variables `{"params", "batch_stats"}` (eval-mode BatchNorm), from wherever it comes from: a
pretraining workdir, a `backbone/` export, or a converted PyTorch checkpoint (`load_backbone`).

Two linear-probe protocols:

- "reference": the published protocol. Every epoch re-augments the training images (random
  resized crop + flip), pushes them through the frozen backbone and trains one linear layer
  (weights N(0, 0.01), bias 0; SGD momentum 0.9, lr 0.3 per 256 examples, weight decay 1e-6,
  batch 256, cosine, 100 epochs); eval on resize + centre crop; top-1 / top-5.
- "features": extracts eval-preprocessed features once, standardises them with the training
  mean/std, and trains the same linear layer with the same optimizer on them. Much cheaper (the
  backbone runs once), and what the small in-memory datasets use. It differs from "reference" in
  two ways: no augmentation of the probe's training images, and standardised features.

Command line (results.json + results.md in the workdir):

  python -m barlow_jax.evaluate --config=configs/eval_linear.py \
      --config.eval.backbone=workdirs/cluttered_digits --workdir=workdirs/eval_linear
"""

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Datasets `input_pipeline.load_labelled_arrays` holds in memory: the fast paths apply to them.
IN_MEMORY_DATASETS = ("cluttered_digits", "digits", "cifar10", "cifar100", "cifar")

# Bound on the [test_chunk, num_train] similarity matrix of the kNN monitor (elements).
_KNN_MAX_SIMILARITIES = 1 << 25


# ---------------------------------------------------------------------------------------------
# Metrics.


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


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_predict(train_n, train_labels, queries, temperature, *, k, num_classes):
  sims = _l2_normalize(queries) @ train_n.T  # [Q, N_train] cosine similarities.
  top_sims, top_idx = jax.lax.top_k(sims, k)
  weights = jnp.exp(top_sims / temperature)
  votes = jnp.einsum("qk,qkc->qc", weights, jax.nn.one_hot(train_labels[top_idx], num_classes))
  return jnp.argmax(votes, axis=-1)


def knn_accuracy(
  train_features,
  train_labels,
  test_features,
  test_labels,
  *,
  num_classes: int,
  k: int = 200,
  temperature: float = 0.1,
) -> float:
  """Weighted kNN top-1 accuracy on L2-normalised features (InstDisc's SSL monitor).

  Each test point votes over its k most cosine-similar training points, each weighted by
  exp(similarity / temperature); the class with the largest total wins. The test set is processed
  in chunks so the similarity matrix stays under ~128 MiB whatever the sizes.

  Args:
    train_features: [N, D] float. train_labels: [N] int in [0, num_classes).
    test_features: [M, D] float. test_labels: [M] int.
    num_classes: number of classes C.
    k: neighbours (clipped to N). temperature: > 0.

  Returns:
    Accuracy in [0, 1] as a Python float.
  """
  train_features = np.asarray(train_features, np.float32)
  test_features = np.asarray(test_features, np.float32)
  train_labels = np.asarray(train_labels).astype(np.int32)
  test_labels = np.asarray(test_labels).astype(np.int32)
  if train_features.ndim != 2 or test_features.ndim != 2:
    raise ValueError(
      f"train_features and test_features must be [N, D], got {train_features.shape}, "
      f"{test_features.shape}"
    )
  if train_features.shape[1] != test_features.shape[1]:
    raise ValueError(
      f"feature sizes differ: train {train_features.shape[1]}, test {test_features.shape[1]}"
    )
  if len(train_labels) != len(train_features) or len(test_labels) != len(test_features):
    raise ValueError("train_labels / test_labels must have one label per feature row")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  if len(test_features) == 0:
    return 0.0
  n_train = len(train_features)
  k = min(k, n_train)
  chunk = int(max(1, min(len(test_features), _KNN_MAX_SIMILARITIES // n_train)))
  train_n = _l2_normalize(jnp.asarray(train_features))
  train_lab = jnp.asarray(train_labels)
  correct = 0
  for start in range(0, len(test_features), chunk):
    queries = test_features[start : start + chunk]
    n = len(queries)
    if n < chunk:  # Pad so every chunk reuses one compiled shape.
      queries = np.concatenate([queries, np.zeros((chunk - n, queries.shape[1]), np.float32)])
    pred = _knn_predict(
      train_n, train_lab, jnp.asarray(queries), temperature, k=k, num_classes=num_classes
    )
    correct += int(np.sum(np.asarray(pred)[:n] == test_labels[start : start + n]))
  return correct / len(test_features)


# ---------------------------------------------------------------------------------------------
# Linear probe on pre-extracted features (the fast path).


@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """A trained linear classifier on (optionally standardised) features.

  kernel: [D, C], bias: [C], mean / std: [D] (zeros / ones when not standardised).
  """

  kernel: jax.Array
  bias: jax.Array
  mean: jax.Array
  std: jax.Array

  def logits(self, features) -> jax.Array:
    """[N, D] features -> [N, C] logits."""
    x = (jnp.asarray(features, jnp.float32) - self.mean) / self.std
    return x @ self.kernel + self.bias


def _sgd(lr_schedule, momentum: float, weight_decay) -> optax.GradientTransformation:
  # torch.optim.SGD: g += wd * p (every parameter), buf = m * buf + g, p -= lr * buf.
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr_schedule, momentum))


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def _fit_linear(
  features, labels, key, lr, momentum, weight_decay, *, num_classes, epochs, batch_size
):
  n, d = features.shape
  steps_per_epoch = n // batch_size
  total = epochs * steps_per_epoch
  schedule = lambda step: lr * 0.5 * (1.0 + jnp.cos(jnp.pi * step / total))
  tx = _sgd(schedule, momentum, weight_decay)
  init_key, key = jax.random.split(key)
  params = {
    "kernel": 0.01 * jax.random.normal(init_key, (d, num_classes), jnp.float32),
    "bias": jnp.zeros((num_classes,), jnp.float32),
  }

  def loss_fn(p, x, y):
    logits = x @ p["kernel"] + p["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, idx):
    p, s = carry
    grads = jax.grad(loss_fn)(p, features[idx], labels[idx])
    updates, s = tx.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), None

  def epoch(e, carry):
    perm = jax.random.permutation(jax.random.fold_in(key, e), n)
    idx = perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
    return jax.lax.scan(step, carry, idx)[0]

  params, _ = jax.lax.fori_loop(0, epochs, epoch, (params, tx.init(params)))
  return params


def train_linear_probe(
  train_features,
  train_labels,
  *,
  num_classes: int,
  epochs: int = 100,
  batch_size: int = 256,
  lr: float = 0.3,
  momentum: float = 0.9,
  weight_decay: float = 1e-6,
  standardize: bool = True,
  seed: int = 0,
) -> LinearProbe:
  """Trains one linear layer on fixed features with the reference probe's optimizer.

  SGD with momentum (torch semantics), weight decay on weights and bias, lr `lr * batch / 256`
  with a per-step cosine to 0, weights N(0, 0.01), bias 0, softmax cross-entropy, reshuffled
  every epoch (remainder dropped; the batch shrinks to N when N < batch_size).

  Args:
    train_features: [N, D] float. train_labels: [N] int in [0, num_classes).
    standardize: subtract the training mean and divide by the training std per feature (the
      "features" protocol; puts raw pixels and ReLU features on one scale for one lr).

  Returns:
    The LinearProbe (its `logits` applies the same standardisation).
  """
  x = np.asarray(train_features, np.float32)
  y = np.asarray(train_labels).astype(np.int32)
  if x.ndim != 2 or y.shape != (x.shape[0],):
    raise ValueError(
      f"train_features must be [N, D] and train_labels [N], got {x.shape}, {y.shape}"
    )
  if epochs < 1 or batch_size < 1:
    raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(
      f"labels must lie in [0, num_classes={num_classes}), got [{y.min()}, {y.max()}]"
    )
  if standardize:
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
  else:
    mean = np.zeros(x.shape[1], np.float32)
    std = np.ones(x.shape[1], np.float32)
  batch_size = min(batch_size, len(x))
  params = _fit_linear(
    jnp.asarray((x - mean) / std),
    jnp.asarray(y),
    jax.random.PRNGKey(seed),
    jnp.float32(lr * batch_size / 256),
    jnp.float32(momentum),
    jnp.float32(weight_decay),
    num_classes=num_classes,
    epochs=epochs,
    batch_size=batch_size,
  )
  return LinearProbe(params["kernel"], params["bias"], jnp.asarray(mean), jnp.asarray(std))


def linear_probe_accuracy(
  train_features, train_labels, test_features, test_labels, *, num_classes: int, **probe_kwargs
) -> dict[str, float]:
  """Trains `train_linear_probe` and returns {"top1", "top5", "train_top1"} in [0, 1]."""
  probe = train_linear_probe(train_features, train_labels, num_classes=num_classes, **probe_kwargs)
  test_logits = probe.logits(test_features)
  test_labels = jnp.asarray(np.asarray(test_labels).astype(np.int32))
  return {
    "top1": float(topk_accuracy(test_logits, test_labels, 1)),
    "top5": float(topk_accuracy(test_logits, test_labels, min(5, num_classes))),
    "train_top1": float(
      topk_accuracy(probe.logits(train_features), jnp.asarray(np.asarray(train_labels)), 1)
    ),
  }


def probe_kwargs_from_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The linear-probe settings of `config.eval` as keyword arguments of `train_linear_probe`."""
  return dict(
    epochs=int(config.eval.probe_epochs),
    batch_size=int(config.eval.probe_batch_size),
    lr=float(config.eval.probe_lr),
    momentum=float(config.eval.probe_momentum),
    weight_decay=float(config.eval.probe_weight_decay),
    seed=int(config.seed),
  )


# ---------------------------------------------------------------------------------------------
# Labelled subsets (semi-supervised).


def select_subset(
  labels,
  *,
  fraction: float | None = None,
  num_examples: int | None = None,
  seed: int = 0,
  balanced: bool = True,
  exclude=None,
) -> np.ndarray:
  """Deterministic labelled subset of a pool, for semi-supervised fine-tuning.

  Args:
    labels: [N] int labels of the pool (e.g. the training split).
    fraction: share of the pool to take (0, 1]; or give `num_examples` instead.
    seed: the same seed and pool always give the same subset.
    balanced: the same count per class (classes present in the pool; the remainder of the total
      goes to classes chosen by the seed; a class with too few examples gives all it has).
      Otherwise a uniform random sample.
    exclude: indices of the pool that must never be chosen (e.g. examples held out for eval when
      the eval split is carved from the same pool).

  Returns:
    Sorted int64 indices into the pool, disjoint from `exclude`.
  """
  labels = np.asarray(labels).reshape(-1)
  n = len(labels)
  if (fraction is None) == (num_examples is None):
    raise ValueError("give exactly one of fraction (e.g. 0.01) or num_examples")
  if fraction is not None:
    if not 0.0 < fraction <= 1.0:
      raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    num_examples = max(1, int(round(fraction * n)))
  available = np.ones(n, bool)
  if exclude is not None:
    available[np.asarray(exclude, np.int64)] = False
  pool = np.flatnonzero(available)
  if not 1 <= num_examples <= len(pool):
    raise ValueError(f"num_examples must be in [1, {len(pool)}] (available), got {num_examples}")
  rng = np.random.default_rng(seed)
  if not balanced:
    return np.sort(rng.choice(pool, size=num_examples, replace=False))
  classes = np.unique(labels[pool])
  per_class = {c: rng.permutation(pool[labels[pool] == c]) for c in classes}
  quota = {c: num_examples // len(classes) for c in classes}
  for c in rng.permutation(classes)[: num_examples % len(classes)]:
    quota[c] += 1
  chosen = [per_class[c][: quota[c]] for c in classes]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Backbones: building, reading, features.


def _mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def _shard_batch(mesh: Mesh | None, tree):
  if mesh is None:
    return jax.tree.map(jnp.asarray, tree)
  return jax.device_put(tree, NamedSharding(mesh, P("data")))


def _replicate(mesh: Mesh | None, tree):
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P()))


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
  variables = backbone.init(jax.random.PRNGKey(seed), x, train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _apply_features(backbone: nn.Module):
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
  mesh = _mesh() if mesh is None else mesh
  variables = _replicate(mesh, backbone_variables(variables))
  fn = _apply_features(backbone)
  feats, labels = [], []
  for batch in batches:
    images = np.asarray(batch["image"], np.float32)
    shard = mesh if len(images) % mesh.size == 0 else None
    out = np.asarray(fn(variables, _shard_batch(shard, images)))
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


def _eval_batch_size(n: int, num_devices: int, preferred: int = 256) -> int:
  size = min(preferred, max(n, 1))
  return max(num_devices, int(math.ceil(size / num_devices)) * num_devices)


def recalibrate_batch_stats(
  backbone: nn.Module,
  variables: Mapping[str, Any],
  images: np.ndarray,
  *,
  num_batches: int,
  batch_size: int,
  seed: int = 0,
  mesh: Mesh | None = None,
) -> dict[str, Any]:
  """Re-estimates BN running statistics on training images ("precise BN"; params fixed).

  Runs `num_batches` random batches through the network in train mode (each BN normalises with
  its batch's statistics, as in training) and sets every running mean / variance to the average
  of its per-batch statistics. Nothing of the previous statistics (e.g. the initial 0 / 1)
  remains.

  Args:
    backbone: module with a `bn_momentum` field (the ResNet). images: [N, S, S, 3] float.
    batch_size: divisible by the mesh size.

  Returns:
    New `{"params", "batch_stats"}` (params unchanged).
  """
  mesh = _mesh() if mesh is None else mesh
  if batch_size % mesh.size:
    raise ValueError(f"batch_size {batch_size} must divide by the {mesh.size} devices")
  if num_batches < 1:
    raise ValueError(f"num_batches must be >= 1, got {num_batches}")
  variables = backbone_variables(variables)
  # Momentum 0: the "running" statistics a train-mode forward returns are that batch's own.
  batch_stats_of = backbone.clone(bn_momentum=0.0)
  params = _replicate(mesh, variables["params"])
  stats0 = _replicate(mesh, variables["batch_stats"])

  @jax.jit
  def batch_stats(batch):
    _, new = batch_stats_of.apply(
      {"params": params, "batch_stats": stats0}, batch, train=True, mutable=["batch_stats"]
    )
    return new["batch_stats"]

  rng = np.random.default_rng(seed)
  total = None
  for _ in range(num_batches):
    idx = rng.choice(len(images), size=batch_size, replace=len(images) < batch_size)
    stats = batch_stats(_shard_batch(mesh, np.asarray(images[idx], np.float32)))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  mean = jax.tree.map(lambda t: t / num_batches, total)
  return {"params": variables["params"], "batch_stats": mean}
