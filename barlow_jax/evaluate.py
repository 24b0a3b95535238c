"""Evaluation: kNN monitor, linear probe, semi-supervised fine-tuning and the default job's table.

docs/reference.md §5 gives the protocols. Everything here reads a frozen backbone as a flax module
plus its variables `{"params", "batch_stats"}` (eval-mode BatchNorm), from wherever it comes from: a
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
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import checkpointing, config_validation, progress

# Datasets `input_pipeline.load_labelled_arrays` holds in memory: the fast paths apply to them.
IN_MEMORY_DATASETS = ("cluttered_digits", "digits", "cifar10", "cifar100", "cifar")

# Steps timed to size a time-matched fine-tuning run.
_TIMED_STEPS = 10

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


def _local_mesh() -> Mesh:
  # In-memory arrays are whole on every process: each process computes the same numbers on its
  # own devices (process 0 writes them) instead of treating its copy as a slice of a global batch.
  return Mesh(np.asarray(jax.local_devices()), ("data",))


def _shard_batch(mesh: Mesh | None, tree):
  """Process-local NumPy batch -> global arrays sharded on axis 0 over the mesh's "data" axis."""
  if mesh is None:
    return jax.tree.map(jnp.asarray, tree)
  sharding = NamedSharding(mesh, P("data"))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


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
  mesh = _mesh() if mesh is None else mesh
  variables = _replicate(mesh, backbone_variables(variables))
  fn = _apply_features(backbone)
  feats, labels = [], []
  for batch in batches:
    images = np.asarray(batch["image"], np.float32)
    shard = mesh if len(images) % mesh.size == 0 else None
    out = _to_host(fn(variables, _shard_batch(shard, images)))
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
  def batch_stats(params, stats0, batch):
    _, new = batch_stats_of.apply(
      {"params": params, "batch_stats": stats0}, batch, train=True, mutable=["batch_stats"]
    )
    return new["batch_stats"]

  rng = np.random.default_rng(seed)
  total = None
  for _ in range(num_batches):
    idx = rng.choice(len(images), size=batch_size, replace=len(images) < batch_size)
    stats = batch_stats(params, stats0, _shard_batch(mesh, np.asarray(images[idx], np.float32)))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  mean = jax.tree.map(lambda t: t / num_batches, total)
  return {"params": variables["params"], "batch_stats": mean}


def _to_host(x: jax.Array) -> np.ndarray:
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ---------------------------------------------------------------------------------------------
# Fine-tuning backbone + head (semi-supervised, and the supervised baseline of the final table).


def random_crop_flip(
  key: jax.Array,
  images: jax.Array,
  *,
  area: tuple[float, float] = (0.08, 1.0),
  aspect: tuple[float, float] = (3 / 4, 4 / 3),
  flip_prob: float = 0.5,
) -> jax.Array:
  """Random resized crop (back to the input size, bilinear) + horizontal flip, per image.

  For in-memory datasets whose batches never pass through tf.data. A crop whose sampled side
  exceeds the image is clipped to the image (torchvision retries instead; rare for the aspect
  range used).

  Args:
    images: [N, H, W, C] float. area: crop area as a fraction of the image. aspect: w / h range.

  Returns:
    [N, H, W, C] float32.
  """
  n, h, w, c = images.shape
  k_area, k_aspect, k_y, k_x, k_flip = jax.random.split(key, 5)
  scale = jax.random.uniform(k_area, (n,), minval=area[0], maxval=area[1])
  ratio = jnp.exp(
    jax.random.uniform(k_aspect, (n,), minval=math.log(aspect[0]), maxval=math.log(aspect[1]))
  )
  crop_w = jnp.clip(jnp.sqrt(scale * ratio) * w, 1.0, w)
  crop_h = jnp.clip(jnp.sqrt(scale / ratio) * h, 1.0, h)
  y0 = jax.random.uniform(k_y, (n,)) * (h - crop_h)
  x0 = jax.random.uniform(k_x, (n,)) * (w - crop_w)

  def one(image, ch, cw, y, x):
    # Output pixel o samples input (o - t) / s: t = -offset * s maps [0, H) onto the crop.
    s = jnp.stack([h / ch, w / cw])
    return jax.image.scale_and_translate(
      image.astype(jnp.float32), (h, w, c), (0, 1), s, -jnp.stack([y, x]) * s, "linear"
    )

  out = jax.vmap(one)(images, crop_h, crop_w, y0, x0)
  flip = jax.random.uniform(k_flip, (n,)) < flip_prob
  return jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)


class Classifier(nn.Module):
  """Backbone + one linear head (weights N(0, 0.01), bias 0): images -> [N, num_classes] logits."""

  backbone: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool):
    features = self.backbone(x, train=train).astype(jnp.float32)
    head = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="head")
    return head(features)


def finetune(
  backbone: nn.Module,
  variables: Mapping[str, Any],
  batches: Iterator[Mapping[str, np.ndarray]],
  *,
  num_classes: int,
  num_steps: int,
  batch_size: int,
  lr_backbone: float = 0.005,
  lr_head: float = 0.5,
  momentum: float = 0.9,
  weight_decay: float = 0.0,
  optimizer: Callable[[int], optax.GradientTransformation] | None = None,
  augment: Mapping[str, Any] | None = None,
  time_budget_s: float | None = None,
  seed: int = 0,
  mesh: Mesh | None = None,
  on_step: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
  """Trains backbone + a new linear head with cross-entropy, train-mode BatchNorm.

  SGD (torch semantics) with two learning rates, each `lr * batch_size / 256` with a per-step
  cosine to 0; weight decay on weights only (ndim > 1). The reference semi-supervised protocol is
  lr_backbone 0.005, lr_head 0.5, weight decay 0, 20 epochs.

  Args:
    backbone, variables: the starting point (`{"params", "batch_stats"}` of the backbone).
    batches: infinite iterator of {"image": [B, S, S, 3], "label": [B]} (B = global batch, or the
      process-local part of it on several hosts).
    optimizer: if given, `optimizer(num_steps)` is the transformation used instead of the
      two-learning-rate SGD above (lr_backbone, lr_head, momentum, weight_decay are then unused).
    augment: None (batches come augmented) or {"area", "aspect", "flip_prob"} for
      `random_crop_flip` applied on the devices.
    time_budget_s: if set, `num_steps` is replaced by the number of steps that fit this many
      seconds, measured on a few steps after compilation (the schedule then spans those steps).
    on_step: called as `on_step(done, num_steps)` after each step (progress, stop requests).

  Returns:
    (Classifier variables {"params": {"backbone", "head"}, "batch_stats": {"backbone"}},
     {"steps", "seconds", "final_loss"}).
  """
  mesh = _mesh() if mesh is None else mesh
  if batch_size % mesh.size:
    raise ValueError(f"batch_size {batch_size} must divide by the {mesh.size} devices")
  model = Classifier(backbone=backbone, num_classes=num_classes)
  start = backbone_variables(variables)
  first = next(batches)
  head = jax.jit(functools.partial(model.init, train=False))(
    jax.random.PRNGKey(seed), jnp.asarray(first["image"][:1], jnp.float32)
  )
  params = {"backbone": start["params"], "head": head["params"]["head"]}
  stats = {"backbone": start["batch_stats"]}

  def make_tx(steps):
    if optimizer is not None:
      return optimizer(steps)

    def part(lr):
      rate = lr * batch_size / 256
      sched = lambda t: rate * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, steps) / steps))
      return _sgd(sched, momentum, 0.0)

    decay = optax.add_decayed_weights(
      weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    )
    labels = {"backbone": jax.tree.map(lambda _: "backbone", params["backbone"]), "head": {}}
    labels["head"] = jax.tree.map(lambda _: "head", params["head"])
    return optax.chain(
      decay, optax.multi_transform({"backbone": part(lr_backbone), "head": part(lr_head)}, labels)
    )

  def make_step(tx):
    @jax.jit
    def step(params, stats, opt_state, batch, key):
      images = batch["image"]
      if augment is not None:
        images = random_crop_flip(key, images, **augment)

      def loss_fn(p):
        logits, new = model.apply(
          {"params": p, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, new["batch_stats"]

      (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), new_stats, opt_state, loss

    return step

  def batch_arrays(b):
    return _shard_batch(
      mesh,
      {
        "image": np.asarray(b["image"], np.float32),
        "label": np.asarray(b["label"]).astype(np.int32),
      },
    )

  key = jax.random.PRNGKey(seed + 1)
  if time_budget_s is not None:
    logging.info(
      "Fine-tuning: compiling and timing %d steps to fit the %.0f s budget.",
      _TIMED_STEPS,
      time_budget_s,
    )
    # Time steps of a throwaway run to size the real one. Two warm-up calls: the first compiles
    # for host inputs, the second for the device-resident outputs it feeds back.
    tx = make_tx(max(num_steps, 1))
    step = make_step(tx)
    p, s = _replicate(mesh, params), _replicate(mesh, stats)
    o = tx.init(p)
    b = batch_arrays(first)
    for _ in range(2):
      p, s, o, loss = step(p, s, o, b, key)
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for _ in range(_TIMED_STEPS):
      p, s, o, loss = step(p, s, o, b, key)
    jax.block_until_ready(loss)
    per_step = (time.perf_counter() - t0) / _TIMED_STEPS
    num_steps = max(1, int(time_budget_s / per_step))
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  tx = make_tx(num_steps)
  step = make_step(tx)
  params, stats = _replicate(mesh, params), _replicate(mesh, stats)
  opt_state = tx.init(params)
  t0 = time.perf_counter()
  batch = first
  loss = jnp.zeros(())
  for i in range(num_steps):
    if i > 0:
      batch = next(batches)
    params, stats, opt_state, loss = step(
      params, stats, opt_state, batch_arrays(batch), jax.random.fold_in(key, i)
    )
    if on_step is not None:
      on_step(i + 1, num_steps)
  loss = float(loss)
  info = {"steps": num_steps, "seconds": time.perf_counter() - t0, "final_loss": loss}
  return {"params": params, "batch_stats": stats}, info


def random_batches(
  images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite shuffled training batches over in-memory arrays (reshuffled every epoch)."""
  rng = np.random.default_rng(seed)
  n = len(images)
  if n < batch_size:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
  while True:
    perm = rng.permutation(n)
    for i in range(n // batch_size):
      idx = perm[i * batch_size : (i + 1) * batch_size]
      yield {"image": images[idx], "label": labels[idx]}


def classifier_accuracy(
  model: Classifier,
  variables: Mapping[str, Any],
  batches: Iterable[Mapping[str, np.ndarray]],
  *,
  mesh: Mesh | None = None,
) -> dict[str, float]:
  """Top-1 / top-5 of a Classifier (eval-mode BN) over one pass of masked eval batches."""
  mesh = _mesh() if mesh is None else mesh
  variables = _replicate(mesh, variables)
  k5 = min(5, model.num_classes)

  @jax.jit
  def counts(variables, batch):
    logits = model.apply(variables, batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    n = jnp.sum(mask)
    top1 = topk_accuracy(logits, batch["label"], 1, batch["mask"]) * n
    top5 = topk_accuracy(logits, batch["label"], k5, batch["mask"]) * n
    return jnp.stack([top1, top5, n])

  total = np.zeros(3)
  for b in batches:
    arrays = {
      "image": np.asarray(b["image"], np.float32),
      "label": np.asarray(b["label"]).astype(np.int32),
      "mask": np.asarray(b.get("mask", np.ones(len(b["image"]), bool)), bool),
    }
    shard = mesh if len(arrays["image"]) % mesh.size == 0 else None
    total += _to_host(counts(variables, _shard_batch(shard, arrays)))
  if total[2] == 0:
    raise ValueError("classifier_accuracy: no examples")
  return {"top1": float(total[0] / total[2]), "top5": float(total[1] / total[2])}


# ---------------------------------------------------------------------------------------------
# Reading a backbone.


def load_backbone(
  path: str, *, checkpoint_step: int = -1
) -> tuple[nn.Module, dict[str, Any], ml_collections.ConfigDict]:
  """Reads a frozen backbone from any of the places a run or a conversion leaves one.

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
  from barlow_jax import checkpointing

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


# ---------------------------------------------------------------------------------------------
# The default job's final table.


def _evaluate_features(name, train_f, train_y, test_f, test_y, *, num_classes, config, **extra):
  t0 = time.perf_counter()
  linear = linear_probe_accuracy(
    train_f, train_y, test_f, test_y, num_classes=num_classes, **probe_kwargs_from_config(config)
  )
  knn = knn_accuracy(
    train_f,
    train_y,
    test_f,
    test_y,
    num_classes=num_classes,
    k=int(config.eval.knn_k),
    temperature=float(config.eval.knn_temperature),
  )
  return {
    "name": name,
    "linear_top1": linear["top1"],
    "linear_top5": linear["top5"],
    "linear_train_top1": linear["train_top1"],
    "knn_top1": knn,
    "feature_dim": int(np.asarray(train_f).shape[1]),
    "eval_seconds": time.perf_counter() - t0,
    **extra,
  }


def _round_to(n: int, multiple: int) -> int:
  return max(multiple, (n // multiple) * multiple)


def run_final_evaluation(
  config: ml_collections.ConfigDict,
  workdir: str,
  variables: Mapping[str, Any],
  *,
  pretrain_seconds: float | None = None,
  pretrain_steps: int | None = None,
  mesh: Mesh | None = None,
  should_stop: Callable[[], bool] | None = None,
  settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """The end-of-pretraining results table for a labelled in-memory dataset; writes it to workdir.

  Linear probe ("features" protocol: standardised features, SGD momentum 0.9, lr 0.3 per 256,
  wd 1e-6, cosine, `config.eval.probe_epochs`) and weighted kNN (`config.eval.knn_k`,
  `knn_temperature`) on `config.dataset.eval_split`, trained on `config.dataset.probe_split`, for
    (a) the pretrained backbone;
    (b) the same architecture at random init (seed `config.seed`), with its initial BN statistics
        and with BN statistics recalibrated on the training images;
    (c) raw pixels (the normalised images, flattened); with `config.model.standardize_input`, also
        those pixels after the backbone's per-image standardisation, a stricter floor reported
        beside the targets (`margin_over_standardised_pixels`) but not part of them;
    (d) the same architecture trained with labels (cross-entropy, the pretraining's optimizer,
        learning rates and schedule from `config.optim`, the pretraining's crop + flip settings of
        view A, batch `config.batch_size`) for the same wall time
        (`config.eval.supervised_match="time"`, needs `pretrain_seconds`) or number of steps
        ("steps") as pretraining; its probe, kNN and own-head accuracy.
  (b)-(d) only when `config.eval.baselines` (and `config.eval.supervised` for (d)). The targets
  compare (a)'s linear top-1 with the stronger of linear / kNN over both (b) variants and over (c).

  Args:
    config: the pretraining config. workdir: where results.json / results.md go.
    variables: the trained BarlowTwins variables (or the backbone's), `{"params", "batch_stats"}`.
    pretrain_seconds: wall time of pretraining (sizes (d) when matching time; recorded).
    pretrain_steps: steps of pretraining (sizes (d) when matching steps; recorded). Default: the
      config's total steps.
    mesh: default one "data" axis over this process's devices.
    should_stop: polled between rows and between the supervised reference's steps; when it
      returns True, `progress.Stopped` is raised and nothing is written.
    settings: recorded as results["evaluation_settings"] (what the table was computed with;
      `barlow_jax.finish` compares it on a rerun).

  Each row is logged as it starts (with the ETA of the rest) and ends; the supervised reference
  logs its steps' progress.

  Returns:
    {"rows": [...], "targets": {...}, ...} as written to results.json.

  Raises:
    progress.Stopped: `should_stop()` became true (SIGTERM).
  """
  from barlow_jax import input_pipeline

  mesh = _local_mesh() if mesh is None else mesh
  total_t0 = time.perf_counter()
  probe_split, eval_split = config.dataset.probe_split, config.dataset.eval_split
  if not probe_split or not eval_split:
    raise ValueError(
      "the final evaluation needs labelled data: set config.dataset.probe_split and "
      "config.dataset.eval_split, or config.eval.final=False"
    )
  train_x, train_y = input_pipeline.load_labelled_arrays(config, probe_split)
  test_x, test_y = input_pipeline.load_labelled_arrays(config, eval_split)
  train_y, test_y = np.asarray(train_y, np.int32), np.asarray(test_y, np.int32)
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  backbone = create_backbone(config.model)
  eval_bs = _eval_batch_size(len(train_x), mesh.size)
  common = dict(num_classes=num_classes, config=config)

  def features(vars_):
    ftr, _ = extract_features(backbone, vars_, array_batches(train_x, train_y, eval_bs), mesh=mesh)
    fte, _ = extract_features(backbone, vars_, array_batches(test_x, test_y, eval_bs), mesh=mesh)
    return ftr, fte

  standardised = bool(config.eval.baselines and config.model.get("standardize_input", False))
  supervised = bool(config.eval.baselines and config.eval.supervised)
  phases = progress.Phases(
    "Final evaluation",
    1 + (3 + standardised + supervised) * bool(config.eval.baselines),
    should_stop,
  )

  def row(name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    phases.begin(name)
    out = compute()
    phases.end()
    logging.info(
      "Final evaluation: %s: linear top-1 %.1f%%, kNN top-1 %.1f%%",
      name,
      100 * out["linear_top1"],
      100 * out["knn_top1"],
    )
    return out

  def of_features(name: str, vars_fn: Callable[[], Mapping[str, Any]]):
    return lambda: _evaluate_features(
      name, *_with_labels(features(vars_fn()), train_y, test_y), **common
    )

  rows = [row("Barlow Twins", of_features("Barlow Twins", lambda: variables))]
  if config.eval.baselines:
    # Built inside the first row that needs it, so its compilation is part of a logged phase.
    random_vars = functools.cache(
      lambda: init_backbone(backbone, int(train_x.shape[1]), int(config.seed))
    )
    name = "random init (initial BN statistics)"
    rows.append(row(name, of_features(name, random_vars)))
    recal_bs = _round_to(min(int(config.batch_size), len(train_x)), mesh.size)
    name = "random init (BN recalibrated on train images)"
    recalibrate = lambda: recalibrate_batch_stats(
      backbone,
      random_vars(),
      train_x,
      num_batches=int(config.eval.bn_recalibration_batches),
      batch_size=recal_bs,
      seed=int(config.seed),
      mesh=mesh,
    )
    rows.append(row(name, of_features(name, recalibrate)))
    flat = lambda x: np.asarray(x).reshape(len(x), -1)
    pixels = lambda name, fn: (
      lambda: _evaluate_features(
        name, flat(fn(train_x)), train_y, flat(fn(test_x)), test_y, **common
      )
    )
    rows.append(row("raw pixels", pixels("raw pixels", lambda x: x)))
    if standardised:
      # What the backbone's fixed first step makes of the pixels: a stricter floor, reported
      # beside the targets (which compare against the raw pixels).
      from barlow_jax import models

      standardise = jax.jit(lambda x: models.standardize_images(x, config.model.input_epsilon))
      rows.append(row(STANDARDISED_PIXELS, pixels(STANDARDISED_PIXELS, standardise)))
    if supervised:
      rows.append(
        row(
          "supervised reference, same backbone",
          lambda: _supervised_row(
            config,
            backbone,
            random_vars(),
            (train_x, train_y),
            (test_x, test_y),
            num_classes,
            pretrain_seconds=pretrain_seconds,
            pretrain_steps=pretrain_steps,
            mesh=mesh,
            features=features,
            should_stop=should_stop,
          ),
        )
      )
  results = {
    "dataset": config.dataset.name,
    "probe_split": probe_split,
    "eval_split": eval_split,
    "num_train": len(train_x),
    "num_eval": len(test_x),
    "num_classes": num_classes,
    "seed": int(config.seed),
    "backbone": f"{config.model.backbone} width {config.model.width} stem {config.model.stem}",
    "pretrain_seconds": pretrain_seconds,
    "pretrain_steps": pretrain_steps,
    "probe": {"protocol": "features", **probe_kwargs_from_config(config)},
    "knn": {"k": int(config.eval.knn_k), "temperature": float(config.eval.knn_temperature)},
    "rows": rows,
    "targets": _targets(rows),
    "eval_seconds": time.perf_counter() - total_t0,
  }
  if settings is not None:
    results["evaluation_settings"] = dict(settings)
  write_results(workdir, results)
  return results


def _with_labels(feats, train_y, test_y):
  return feats[0], train_y, feats[1], test_y


def _supervised_row(
  config,
  backbone,
  random_vars,
  train,
  test,
  num_classes,
  *,
  pretrain_seconds,
  pretrain_steps,
  mesh,
  features,
  should_stop=None,
):
  from barlow_jax import input_pipeline, optim

  train_x, train_y = train
  test_x, test_y = test
  match = config.eval.supervised_match
  if match not in ("time", "steps"):
    raise ValueError(f"config.eval.supervised_match={match!r}: use 'time' or 'steps'")
  if pretrain_steps is None:
    pretrain_steps = optim.total_train_steps(config, input_pipeline.steps_per_epoch(config))
  batch_size = _round_to(min(int(config.batch_size), len(train_x)), mesh.size)
  view = config.augment.view_a
  budget = pretrain_seconds if match == "time" and pretrain_seconds else None
  trained, info = finetune(
    backbone,
    random_vars,
    random_batches(train_x, train_y, batch_size, seed=int(config.seed)),
    num_classes=num_classes,
    num_steps=int(pretrain_steps),
    batch_size=batch_size,
    optimizer=functools.partial(_pretrain_optimizer, config, len(train_x) // batch_size),
    augment={
      "area": tuple(view.crop_area),
      "aspect": tuple(view.crop_aspect),
      "flip_prob": float(view.flip_prob),
    },
    time_budget_s=budget,
    seed=int(config.seed),
    mesh=mesh,
    on_step=_progress_callback("Supervised reference", should_stop),
  )
  model = Classifier(backbone=backbone, num_classes=num_classes)
  eval_bs = _eval_batch_size(len(test_x), mesh.size)
  head = classifier_accuracy(model, trained, array_batches(test_x, test_y, eval_bs), mesh=mesh)
  inner = backbone_variables(trained)
  name = f"supervised, same backbone ({info['steps']} steps, {info['seconds']:.0f} s)"
  return _evaluate_features(
    name,
    *_with_labels(features(inner), train_y, test_y),
    num_classes=num_classes,
    config=config,
    supervised_head_top1=head["top1"],
    supervised_steps=info["steps"],
    supervised_seconds=info["seconds"],
    supervised_matched=match if budget or match == "steps" else "steps",
  )


def _progress_callback(name: str, should_stop) -> Callable[[int, int], None]:
  meter = []

  def on_step(done: int, total: int) -> None:
    if not meter:
      meter.append(progress.Progress(name, total, should_stop=should_stop))
    meter[0].update(done)

  return on_step


def _pretrain_optimizer(config, steps_per_epoch: int, num_steps: int):
  # The pretraining's optimizer, learning rates and schedule (warmup included), stretched over
  # `num_steps`: the supervised reference gets the same optimizer the method had.
  from barlow_jax import optim

  run = ml_collections.ConfigDict(config.to_dict())
  run.num_train_steps = int(num_steps)
  run.optim.warmup_epochs = min(
    float(config.optim.warmup_epochs), 0.5 * num_steps / max(steps_per_epoch, 1)
  )
  return optim.create_optimizer(run, max(steps_per_epoch, 1))[0]


STANDARDISED_PIXELS = "raw pixels, per-image standardised (the backbone's input step)"


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
  bt = rows[0]["linear_top1"]
  best = lambda r: max(r["linear_top1"], r["knn_top1"])
  random_rows = [r for r in rows if r["name"].startswith("random init")]
  raw_rows = [r for r in rows if r["name"] == "raw pixels"]
  out: dict[str, Any] = {"barlow_twins_linear_top1": bt, "linear_at_least_45": bt >= 0.45}
  if random_rows:
    out["best_random_init"] = max(best(r) for r in random_rows)
    out["margin_over_random_init"] = bt - out["best_random_init"]
  if raw_rows:
    out["best_raw_pixels"] = best(raw_rows[0])
    out["margin_over_raw_pixels"] = bt - out["best_raw_pixels"]
  margins = [out[k] for k in ("margin_over_random_init", "margin_over_raw_pixels") if k in out]
  out["met"] = bool(out["linear_at_least_45"] and margins and min(margins) >= 0.15)
  standardised = [r for r in rows if r["name"] == STANDARDISED_PIXELS]
  if standardised:
    out["best_standardised_pixels"] = best(standardised[0])
    out["margin_over_standardised_pixels"] = bt - out["best_standardised_pixels"]
  return out


def results_markdown(results: Mapping[str, Any]) -> str:
  """The results table (percentages) with its settings, as Markdown."""
  lines = [
    f"Dataset {results['dataset']} ({results['num_train']} train / {results['num_eval']} "
    f"held-out, {results['num_classes']} classes), backbone {results['backbone']}, "
    f"seed {results['seed']}.",
    "",
    "| representation | linear top-1 | linear top-5 | kNN top-1 | dim |",
    "|---|---|---|---|---|",
  ]
  for r in results["rows"]:
    lines.append(
      f"| {r['name']} | {100 * r['linear_top1']:.1f} | {100 * r['linear_top5']:.1f} | "
      f"{100 * r['knn_top1']:.1f} | {r['feature_dim']} |"
    )
  for r in results["rows"]:
    if "supervised_head_top1" in r:
      lines += ["", f"Supervised model's own head: top-1 {100 * r['supervised_head_top1']:.1f}%."]
  t = results.get("targets", {})
  if "margin_over_random_init" in t:
    lines += [
      "",
      f"Targets: Barlow Twins linear top-1 {100 * t['barlow_twins_linear_top1']:.1f}% "
      f"(>= 45: {'yes' if t['linear_at_least_45'] else 'no'}); margin over the best random-init "
      f"score {100 * t['margin_over_random_init']:+.1f} points, over the best raw-pixel score "
      f"{100 * t.get('margin_over_raw_pixels', float('nan')):+.1f} points (>= 15 both: "
      f"{'yes' if t['met'] else 'no'}).",
    ]
  if "margin_over_standardised_pixels" in t:
    lines += [
      "",
      "Stricter floor, not part of the targets: over the best score of the per-image standardised "
      f"pixels {100 * t['margin_over_standardised_pixels']:+.1f} points.",
    ]
  p = results.get("probe", {})
  extra = []
  if results.get("pretrain_seconds") is not None:
    extra.append(f"pretraining {results['pretrain_seconds']:.0f} s")
  if results.get("pretrain_steps") is not None:
    extra.append(f"{results['pretrain_steps']} steps")
  lines += [
    "",
    f"Linear probe: {p.get('protocol')} protocol, {p.get('epochs')} epochs, batch "
    f"{p.get('batch_size')}, lr {p.get('lr')} per 256, wd {p.get('weight_decay')}; kNN k "
    f"{results['knn']['k']}, T {results['knn']['temperature']}"
    + (f"; {', '.join(extra)}." if extra else "."),
  ]
  return "\n".join(lines) + "\n"


def write_results(workdir: str, results: Mapping[str, Any], *, text: str | None = None) -> None:
  """Process 0 prints the Markdown table (`text`, or one made from `results`) and writes
  results.json + results.md into workdir.

  Each file is written whole or not at all (a temporary file renamed over it); the JSON first,
  the Markdown view of it last.
  """
  if jax.process_index() != 0:
    return
  if text is None:
    text = results_markdown(results) if "rows" in results else _generic_markdown(results)
  print(text, flush=True)
  checkpointing.path(workdir).mkdir(parents=True, exist_ok=True)
  checkpointing.write_json(os.path.join(workdir, checkpointing.RESULTS_JSON), results)
  checkpointing.write_text(os.path.join(workdir, checkpointing.RESULTS_MD), text)


def _generic_markdown(results: Mapping[str, Any]) -> str:
  lines = ["| metric | value |", "|---|---|"]
  for key, value in results.items():
    if isinstance(value, float):
      lines.append(f"| {key} | {value:.4f} |")
    elif isinstance(value, int | str):
      lines.append(f"| {key} | {value} |")
  return "\n".join(lines) + "\n"


# Kept for callers that read the backbone back from the workdir (train.py's hook looks it up).
def final_evaluation(
  config: ml_collections.ConfigDict,
  workdir: str,
  variables: Mapping[str, Any] | None = None,
  **kwargs,
) -> dict[str, Any]:
  """`run_final_evaluation`, reading the variables from `workdir` (backbone/ export or latest
  checkpoint) when none are given."""
  if variables is None:
    _, variables, _ = load_backbone(workdir)
  return run_final_evaluation(config, workdir, variables, **kwargs)


# ---------------------------------------------------------------------------------------------
# Standalone evaluation of a saved backbone (`python -m barlow_jax.evaluate`).


def _in_memory(config: ml_collections.ConfigDict) -> bool:
  from barlow_jax import datasets

  name = config.dataset.name
  return name in datasets.IN_MEMORY or name.split(":")[0].split("/")[0] in ("cifar10", "cifar100")


def _num_classes(config: ml_collections.ConfigDict) -> int:
  from barlow_jax import datasets

  name = config.dataset.name
  if name in datasets.IN_MEMORY:
    return int(datasets.IN_MEMORY[name](seed=0)["train"][1].max()) + 1
  if name == "folder":
    root = epath.Path(config.dataset.folder) / config.dataset.probe_split
    root = root if root.is_dir() else epath.Path(config.dataset.folder)
    return len([d for d in root.iterdir() if d.is_dir()])
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=config.dataset.data_dir or None)
  num = getattr(builder.info.features[config.dataset.label_key], "num_classes", None)
  if not num:
    raise ValueError(f"config.dataset.label_key={config.dataset.label_key!r} is not a class label")
  return int(num)


def crop_flip_config(
  config: ml_collections.ConfigDict, *, split: str, batch_size: int, name: str | None = None
) -> ml_collections.ConfigDict:
  """`config` whose pretraining stream yields the probe's training augmentation in view A.

  Random resized crop (the configured area / aspect / method) + flip, nothing else: colour
  jitter, grayscale, blur, solarize, channel permutation and noise are switched off.
  """
  out = ml_collections.ConfigDict(config.to_dict())
  out.dataset.train_split = split
  if name is not None:
    out.dataset.name = name
  out.batch_size = int(batch_size)
  out.num_train_examples = -1
  for view in (out.augment.view_a, out.augment.view_b):
    view.jitter_prob = 0.0
    view.grayscale_prob = 0.0
    view.blur_prob = 0.0
    view.solarize_prob = 0.0
    view.channel_permute_prob = 0.0
    view.noise_std = 0.0
  return out


def _labelled_view_a(iterator, config):
  from barlow_jax import input_pipeline

  for batch in iterator:
    if "label" not in batch:
      raise ValueError("the training split has no labels (config.dataset.label_key)")
    # The pretraining stream's views are uint8; the probe's network takes normalised floats.
    yield {
      "image": input_pipeline.normalize_views(batch, config)["view_a"],
      "label": batch["label"],
    }


def reference_linear_probe(
  config: ml_collections.ConfigDict,
  backbone: nn.Module,
  variables: Mapping[str, Any],
  *,
  num_classes: int,
  mesh: Mesh | None = None,
) -> dict[str, float]:
  """The published linear protocol on a frozen backbone (eval-mode BN), streaming the data.

  Each epoch re-augments `config.dataset.probe_split` (random resized crop + flip), the frozen
  backbone gives features, one linear layer (N(0, 0.01) weights, bias 0) trains with SGD
  momentum `config.eval.probe_momentum`, lr `probe_lr * batch / 256`, wd `probe_weight_decay`,
  per-step cosine, for `probe_epochs`; top-1 / top-5 on `config.dataset.eval_split` (resize +
  centre crop). The backbone's variables are never updated.

  Returns:
    {"top1", "top5", "steps", "seconds"}.
  """
  from barlow_jax import input_pipeline

  mesh = _mesh() if mesh is None else mesh
  batch_size = int(config.eval.probe_batch_size)
  train_config = crop_flip_config(config, split=config.dataset.probe_split, batch_size=batch_size)
  total = int(config.eval.probe_epochs) * input_pipeline.steps_per_epoch(train_config)
  rate = float(config.eval.probe_lr) * batch_size / 256
  tx = _sgd(
    lambda t: rate * 0.5 * (1.0 + jnp.cos(jnp.pi * t / total)),
    float(config.eval.probe_momentum),
    float(config.eval.probe_weight_decay),
  )
  frozen = _replicate(mesh, backbone_variables(variables))
  size = int(config.dataset.image_size)
  dim = backbone.apply(frozen, jnp.zeros((1, size, size, 3)), train=False).shape[-1]
  head = {
    "kernel": 0.01 * jax.random.normal(jax.random.PRNGKey(config.seed), (dim, num_classes)),
    "bias": jnp.zeros((num_classes,)),
  }
  head = _replicate(mesh, head)
  opt_state = tx.init(head)

  @jax.jit
  def step(head, opt_state, frozen, batch):
    feats = jax.lax.stop_gradient(backbone.apply(frozen, batch["image"], train=False))
    feats = feats.astype(jnp.float32)

    def loss_fn(h):
      logits = feats @ h["kernel"] + h["bias"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(head)
    updates, opt_state = tx.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss

  t0 = time.perf_counter()
  batches = _labelled_view_a(input_pipeline.create_pretrain_iterator(train_config), train_config)
  for _ in range(total):
    b = next(batches)
    arrays = {
      "image": np.asarray(b["image"], np.float32),
      "label": np.asarray(b["label"], np.int32),
    }
    head, opt_state, _ = step(head, opt_state, frozen, _shard_batch(mesh, arrays))
  seconds = time.perf_counter() - t0

  @jax.jit
  def counts(head, frozen, batch):
    feats = backbone.apply(frozen, batch["image"], train=False).astype(jnp.float32)
    logits = feats @ head["kernel"] + head["bias"]
    n = jnp.sum(batch["mask"].astype(jnp.float32))
    k5 = min(5, num_classes)
    return jnp.stack(
      [
        topk_accuracy(logits, batch["label"], 1, batch["mask"]) * n,
        topk_accuracy(logits, batch["label"], k5, batch["mask"]) * n,
        n,
      ]
    )

  total_counts = np.zeros(3)
  eval_batches = input_pipeline.create_eval_iterator(
    config, config.dataset.eval_split, batch_size=batch_size
  )
  for b in eval_batches:
    arrays = {
      "image": np.asarray(b["image"], np.float32),
      "label": np.asarray(b["label"], np.int32),
      "mask": np.asarray(b["mask"], bool),
    }
    total_counts += _to_host(counts(head, frozen, _shard_batch(mesh, arrays)))
  return {
    "top1": float(total_counts[0] / total_counts[2]),
    "top5": float(total_counts[1] / total_counts[2]),
    "steps": total,
    "seconds": seconds,
  }


def linear_evaluation(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Linear probe (and kNN on the "features" protocol) of `config.eval.backbone`; writes results."""
  mesh = _mesh()
  backbone, variables, model_config = load_backbone(
    config.eval.backbone, checkpoint_step=int(config.eval.checkpoint_step)
  )
  protocol = config.eval.probe_protocol
  if protocol == "auto":
    protocol = "features" if _in_memory(config) else "reference"
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
    results.update(_features_evaluation(config, backbone, variables, _local_mesh(), knn_only=False))
  else:
    results.update(
      reference_linear_probe(
        config, backbone, variables, num_classes=_num_classes(config), mesh=mesh
      )
    )
  write_results(workdir, results)
  return results


def _features_evaluation(config, backbone, variables, mesh, *, knn_only):
  from barlow_jax import input_pipeline

  train_x, train_y = input_pipeline.load_labelled_arrays(config, config.dataset.probe_split)
  test_x, test_y = input_pipeline.load_labelled_arrays(config, config.dataset.eval_split)
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  bs = _eval_batch_size(len(train_x), mesh.size)
  ftr, _ = extract_features(backbone, variables, array_batches(train_x, train_y, bs), mesh=mesh)
  fte, _ = extract_features(backbone, variables, array_batches(test_x, test_y, bs), mesh=mesh)
  out = {
    "num_train": len(ftr),
    "num_eval": len(fte),
    "knn_top1": knn_accuracy(
      ftr,
      train_y,
      fte,
      test_y,
      num_classes=num_classes,
      k=int(config.eval.knn_k),
      temperature=float(config.eval.knn_temperature),
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
    **_features_evaluation(config, backbone, variables, _local_mesh(), knn_only=True),
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
  from barlow_jax import input_pipeline

  mesh = _mesh()
  backbone, variables, model_config = load_backbone(
    config.eval.backbone, checkpoint_step=int(config.eval.checkpoint_step)
  )
  ev = config.eval
  if config.dataset.probe_split == config.dataset.eval_split:
    raise ValueError(
      "config.dataset.probe_split and eval_split are the same split: the labelled subset would "
      "overlap the evaluation data"
    )
  subset = ev.semisup_subset
  settings = dict(
    lr_backbone=float(ev.semisup_lr_backbone),
    lr_head=float(ev.semisup_lr_head),
    momentum=0.9,
    weight_decay=float(ev.semisup_weight_decay),
    seed=int(ev.semisup_seed),
    mesh=mesh,
  )
  results: dict[str, Any] = {
    "mode": "semisup",
    "backbone_path": _location(ev.backbone),
    "backbone": str(model_config.backbone),
    "dataset": config.dataset.name,
    **{k: v for k, v in ev.to_dict().items() if k.startswith("semisup_")},
  }
  eval_bs = _round_to(int(ev.semisup_batch_size), mesh.size)
  if subset:
    if subset not in ("1pct", "10pct"):
      raise ValueError(f"config.eval.semisup_subset={subset!r}: use '1pct', '10pct' or ''")
    batch_size = int(ev.semisup_batch_size)
    train_config = crop_flip_config(
      config, split="train", batch_size=batch_size, name=f"imagenet2012_subset/{subset}"
    )
    steps = int(ev.semisup_epochs) * input_pipeline.steps_per_epoch(train_config)
    num_classes = _num_classes(config)
    batches = _labelled_view_a(input_pipeline.create_pretrain_iterator(train_config), train_config)
    augment = None
    eval_batches = input_pipeline.create_eval_iterator(
      config, config.dataset.eval_split, batch_size=eval_bs
    )
    results["num_labelled"] = input_pipeline.num_train_examples(train_config)
  else:
    if not _in_memory(config):
      raise ValueError(
        f"config.eval.semisup_subset='' (a fraction) needs an in-memory dataset, not "
        f"{config.dataset.name!r}: use semisup_subset='1pct'/'10pct' for ImageNet"
      )
    train_x, train_y = input_pipeline.load_labelled_arrays(config, config.dataset.probe_split)
    test_x, test_y = input_pipeline.load_labelled_arrays(config, config.dataset.eval_split)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    idx = select_subset(
      train_y,
      fraction=float(ev.semisup_fraction),
      seed=int(ev.semisup_seed),
      balanced=bool(ev.semisup_balanced),
    )
    batch_size = _round_to(min(int(ev.semisup_batch_size), len(idx)), mesh.size)
    steps = max(1, int(ev.semisup_epochs) * (len(idx) // batch_size))
    batches = random_batches(train_x[idx], train_y[idx], batch_size, seed=int(ev.semisup_seed))
    view = config.augment.view_a
    augment = {
      "area": tuple(view.crop_area),
      "aspect": tuple(view.crop_aspect),
      "flip_prob": float(view.flip_prob),
    }
    eval_batches = array_batches(test_x, test_y, eval_bs)
    results["num_labelled"] = len(idx)
    settings["mesh"] = _local_mesh()
  trained, info = finetune(
    backbone,
    variables,
    batches,
    num_classes=num_classes,
    num_steps=steps,
    batch_size=batch_size,
    augment=augment,
    **settings,
  )
  model = Classifier(backbone=backbone, num_classes=num_classes)
  results.update(classifier_accuracy(model, trained, eval_batches, mesh=settings["mesh"]))
  results.update(steps=info["steps"], seconds=info["seconds"], batch_size=batch_size)
  write_results(workdir, results)
  return results


def _location(path: str) -> str:
  """`path` absolute (local) or as given (gs://...), for the results' `backbone_path`."""
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs `config.eval.mode` ("linear", "semisup", "knn", "transfer") on `config.eval.backbone`."""
  if not config.eval.backbone:
    raise ValueError(
      "config.eval.backbone is empty: give a pretraining workdir, a backbone/ export or a "
      "converted PyTorch checkpoint directory (--config.eval.backbone=DIR)"
    )
  from barlow_jax.evaluation import transfer

  modes = {"linear": linear_evaluation, "semisup": semisup_evaluation, "knn": knn_evaluation}
  modes["transfer"] = transfer.transfer_evaluation
  if config.eval.mode not in modes:
    raise ValueError(f"config.eval.mode={config.eval.mode!r}: use one of {sorted(modes)}")
  config_validation.validate_numbers(config)
  return modes[config.eval.mode](config, workdir)


def _main(argv: list[str]) -> None:
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  # Flags are defined only when run as a program: train.py imports this module under main.py's
  # own --config / --workdir flags.
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    "config", None, "Evaluation config, e.g. configs/eval_linear.py.", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Where results.json / results.md go.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(_main)
