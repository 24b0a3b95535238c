"""Weighted kNN classifier on L2-normalised features (docs/reference.md §5), and the kNN
monitor: weighted kNN top-1 of the backbone being trained, every `eval_every_steps`.

The monitor's memory bank is the probe split's eval-preprocessed images, its queries the eval
split's (InstDisc's monitor); the backbone runs in eval mode (running BatchNorm statistics).
Cheap enough to run during pretraining, it shows whether the representation is getting more
useful, where the loss alone cannot. It reads only the state's model and variables, so this
module imports nothing of the training loop.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import data, parallel
from barlow_jax.evaluation.features import backbone_variables

# Bound on the [test_chunk, num_train] similarity matrix of the kNN monitor (elements).
KNN_MAX_SIMILARITIES = 1 << 25


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_predict(train_n, train_labels, queries, temperature, *, k, num_classes):
  sims = _l2_normalize(queries) @ train_n.T  # [Q, N_train] cosine similarities.
  top_sims, top_idx = jax.lax.top_k(sims, k)  # Descending: column 0 is each query's best.
  # exp((s - s_max) / T) = exp(s / T) / exp(s_max / T): one positive factor per query leaves its
  # argmax as it is, and keeps the weights in (0, 1] where exp(s / T) overflows float32 (T below
  # ~0.0113 for s = 1; inf x 0 in the one-hot vote would give NaN).
  weights = jnp.exp((top_sims - top_sims[:, :1]) / temperature)
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
  standardize: bool = False,
) -> float:
  """Weighted kNN top-1 accuracy on L2-normalised features (InstDisc's SSL monitor).

  Each test point votes over its k most cosine-similar training points, each weighted by
  exp(similarity / temperature); the class with the largest total wins. The weights are computed
  as exp((similarity - the query's top similarity) / temperature), the same decisions without
  float32 overflow at small temperatures. The test set is processed
  in chunks so the similarity matrix stays under ~128 MiB whatever the sizes.

  With `standardize`, both sets are first standardised per feature with the training set's mean
  and std (+ 1e-6), the same transform as the linear probe's "features" protocol
  (`linear_probe.train_linear_probe`), so both probes read one representation. Without it,
  features that are all positive (ReLU then average pooling) share one large mean direction: all
  cosine similarities bunch up near 1 and exp(s / T) weights the k neighbours almost alike.

  Args:
    train_features: [N, D] float. train_labels: [N] int in [0, num_classes).
    test_features: [M, D] float. test_labels: [M] int.
    num_classes: number of classes C.
    k: neighbours (clipped to N). temperature: > 0.
    standardize: standardise per feature with the training statistics first (default off: the
      InstDisc monitor's raw features).

  Returns:
    Accuracy in [0, 1] as a Python float.
  """
  train_features, train_labels, test_features, test_labels = _checked_inputs(
    train_features, train_labels, test_features, test_labels, k=k, temperature=temperature
  )
  if len(test_features) == 0:
    return 0.0
  if standardize:
    mean = train_features.mean(axis=0)
    std = train_features.std(axis=0) + 1e-6
    train_features = (train_features - mean) / std
    test_features = (test_features - mean) / std
  n_train = len(train_features)
  k = min(k, n_train)
  chunk = int(max(1, min(len(test_features), KNN_MAX_SIMILARITIES // n_train)))
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


def _checked_inputs(train_features, train_labels, test_features, test_labels, *, k, temperature):
  """The arguments of `knn_accuracy` as float32 / int32 NumPy arrays, or a ValueError."""
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
  return train_features, train_labels, test_features, test_labels


def knn_kwargs_from_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The kNN settings of `config.eval` (knn_k, knn_temperature, knn_standardize) as keywords of
  `knn_accuracy`."""
  return dict(
    k=int(config.eval.knn_k),
    temperature=float(config.eval.knn_temperature),
    standardize=bool(config.eval.get("knn_standardize", False)),
  )


def monitor_enabled(config: ml_collections.ConfigDict, num_classes: int) -> bool:
  """Whether the run has a kNN monitor: `eval_every_steps` > 0, both splits, labels."""
  dataset = config.dataset
  return monitor_wanted(
    int(config.eval_every_steps), dataset.eval_split, dataset.probe_split, num_classes
  )


def monitor_wanted(
  eval_every_steps: int, eval_split: str, probe_split: str, num_classes: int
) -> bool:
  """`monitor_enabled` of the values it reads (`config.eval_every_steps`, `dataset.eval_split`,
  `dataset.probe_split`) and the training split's class count."""
  return bool(eval_every_steps and eval_split and probe_split and num_classes)


def monitor_accuracy(state: Any, config: ml_collections.ConfigDict, mesh: Mesh) -> float:
  """Weighted kNN top-1 (a fraction) of the current backbone: probe split -> eval split.

  Features of both splits are computed on the mesh from global batches (every process feeds its
  shard) and replicated, so every process computes the same accuracy. Every process calls it.

  Args:
    state: the pretraining state (`barlow_jax.train_state.TrainState`), or any object with
      `model.backbone` (a flax module) and the full two-view network's `params` and
      `batch_stats` (their "backbone" entries are used).
    config: the run's config (`dataset.probe_split`, `dataset.eval_split`, `batch_size`, the kNN
      settings of `config.eval`).
    mesh: the run's mesh.
  """
  mesh = parallel.auto_mesh(mesh)  # The same layout on an Explicit mesh (parallel.auto_mesh).
  variables = backbone_variables({"params": state.params, "batch_stats": state.batch_stats})
  variables = parallel.replicate(variables, mesh)
  replicated = NamedSharding(mesh, P())

  def represent(variables, batch):
    features = state.model.backbone.apply(variables, batch["image"], train=False)
    return features.astype(jnp.float32), batch["label"], batch["mask"]

  represent = jax.jit(
    represent, in_shardings=(replicated, parallel.batch_sharding(mesh)), out_shardings=replicated
  )
  out = []
  for split in (config.dataset.probe_split, config.dataset.eval_split):
    features, labels = [], []
    for local in data.create_eval_iterator(config, split, batch_size=int(config.batch_size)):
      feats, label, mask = jax.device_get(represent(variables, parallel.global_batch(local, mesh)))
      features.append(feats[mask])
      labels.append(label[mask])
    out.append((np.concatenate(features), np.concatenate(labels)))
  (train_x, train_y), (test_x, test_y) = out
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  return float(
    knn_accuracy(
      train_x, train_y, test_x, test_y, num_classes=num_classes, **knn_kwargs_from_config(config)
    )
  )
