"""The kNN monitor: weighted kNN top-1 of the backbone being trained, every `eval_every_steps`.

The probe split's eval-preprocessed images are the memory bank, the eval split's are the
queries (`barlow_jax.evaluation.knn`, InstDisc's monitor); the backbone runs in eval mode
(running BatchNorm statistics). Cheap enough to run during pretraining, it shows whether the
representation is getting more useful, where the loss alone cannot.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import data, parallel
from barlow_jax.evaluation.knn import knn_accuracy, knn_kwargs_from_config
from barlow_jax.train_state import TrainState, backbone_of


def is_enabled(config: ml_collections.ConfigDict, num_classes: int) -> bool:
  """Whether the run has a kNN monitor: `eval_every_steps` > 0, both splits, labels."""
  dataset = config.dataset
  return bool(
    config.eval_every_steps and dataset.eval_split and dataset.probe_split and num_classes
  )


def accuracy(state: TrainState, config: ml_collections.ConfigDict, mesh: Mesh) -> float:
  """Weighted kNN top-1 (a fraction) of the current backbone: probe split -> eval split.

  Features of both splits are computed on the mesh from global batches (every process feeds its
  shard) and replicated, so every process computes the same accuracy. Every process calls it.
  """
  mesh = parallel.auto_mesh(mesh)
  variables = parallel.replicate(backbone_of(state), mesh)
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
