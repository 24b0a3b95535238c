"""The final table's rows: a representation's linear probe + kNN, and the baselines.

BN recalibration of a random-init backbone, and the supervised reference trained with the
pretraining's optimizer (`barlow_jax.evaluation.final_table` assembles the table).
"""

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from barlow_jax import parallel, progress
from barlow_jax.evaluation.features import (
  array_batches,
  backbone_variables,
  eval_batch_size,
  round_to,
)
from barlow_jax.evaluation.finetune import (
  Classifier,
  classifier_accuracy,
  finetune,
  random_batches,
)
from barlow_jax.evaluation.knn import knn_accuracy, knn_kwargs_from_config
from barlow_jax.evaluation.linear_probe import (
  linear_probe_accuracy,
  probe_kwargs_from_config,
)


def evaluate_features(name, train_f, train_y, test_f, test_y, *, num_classes, config, **extra):
  """One row of the final table: linear probe + kNN of [N, D] train / [M, D] test features.

  Returns {"name", "linear_top1", "linear_top5", "linear_train_top1", "knn_top1", "feature_dim",
  "eval_seconds", **extra}; the probe and kNN settings come from `config.eval`.
  """
  t0 = time.perf_counter()
  linear = linear_probe_accuracy(
    train_f, train_y, test_f, test_y, num_classes=num_classes, **probe_kwargs_from_config(config)
  )
  knn = knn_accuracy(
    train_f, train_y, test_f, test_y, num_classes=num_classes, **knn_kwargs_from_config(config)
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


def with_labels(feats, train_y, test_y):
  """(train features, test features) -> the positional arguments of `evaluate_features`."""
  return feats[0], train_y, feats[1], test_y


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
  mesh = parallel.create_mesh() if mesh is None else mesh
  if batch_size % mesh.size:
    raise ValueError(f"batch_size {batch_size} must divide by the {mesh.size} devices")
  if num_batches < 1:
    raise ValueError(f"num_batches must be >= 1, got {num_batches}")
  variables = backbone_variables(variables)
  # Momentum 0: the "running" statistics a train-mode forward returns are that batch's own.
  batch_stats_of = backbone.clone(bn_momentum=0.0)
  params = parallel.put_replicated(variables["params"], mesh)
  stats0 = parallel.put_replicated(variables["batch_stats"], mesh)

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
    stats = batch_stats(
      params, stats0, parallel.shard_batch(np.asarray(images[idx], np.float32), mesh)
    )
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  mean = jax.tree.map(lambda t: t / num_batches, total)
  return {"params": variables["params"], "batch_stats": mean}


def supervised_row(
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
  """The supervised reference row: the backbone trained from `random_vars` with labels.

  Same optimizer, schedule and view-A crop + flip as pretraining, for its wall time or steps
  (`config.eval.supervised_match`); then probed like the other rows.
  """
  from barlow_jax import data as input_pipeline
  from barlow_jax import optim

  train_x, train_y = train
  test_x, test_y = test
  match = config.eval.supervised_match
  if match not in ("time", "steps"):
    raise ValueError(f"config.eval.supervised_match={match!r}: use 'time' or 'steps'")
  if pretrain_steps is None:
    pretrain_steps = optim.total_train_steps(config, input_pipeline.steps_per_epoch(config))
  batch_size = round_to(min(int(config.batch_size), len(train_x)), mesh.size)
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
  eval_bs = eval_batch_size(len(test_x), mesh.size)
  head = classifier_accuracy(model, trained, array_batches(test_x, test_y, eval_bs), mesh=mesh)
  inner = backbone_variables(trained)
  name = f"supervised, same backbone ({info['steps']} steps, {info['seconds']:.0f} s)"
  return evaluate_features(
    name,
    *with_labels(features(inner), train_y, test_y),
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
