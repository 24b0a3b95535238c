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

from barlow_jax import models, parallel, progress
from barlow_jax.evaluation.features import (
  array_batches,
  backbone_variables,
  eval_batch_size,
  round_to,
)
from barlow_jax.evaluation.finetune import (
  classifier_accuracy,
  crop_flip_kwargs,
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
  (`config.eval.supervised_match`); then probed like the other rows, with its own head's top-1.

  Args:
    train, test: (images [N, S, S, 3] float32, labels [N] int32) in memory.
    features: `features(variables) -> (train features, test features)` of the backbone.
  """
  match = config.eval.supervised_match
  if match not in ("time", "steps"):
    raise ValueError(f"config.eval.supervised_match={match!r}: use 'time' or 'steps'")
  budget = pretrain_seconds if match == "time" and pretrain_seconds else None
  trained, info = train_supervised(
    config,
    backbone,
    random_vars,
    train,
    num_classes,
    num_steps=pretrain_steps,
    time_budget_s=budget,
    mesh=mesh,
    should_stop=should_stop,
  )
  model = models.Classifier(backbone=backbone, num_classes=num_classes)
  eval_bs = eval_batch_size(len(test[0]), mesh.size)
  head = classifier_accuracy(model, trained, array_batches(*test, eval_bs), mesh=mesh)
  train_f, test_f = features(backbone_variables(trained))
  return evaluate_features(
    f"supervised, same backbone ({info['steps']} steps, {info['seconds']:.0f} s)",
    train_f,
    train[1],
    test_f,
    test[1],
    num_classes=num_classes,
    config=config,
    supervised_head_top1=head["top1"],
    supervised_steps=info["steps"],
    supervised_seconds=info["seconds"],
    supervised_matched=match if budget or match == "steps" else "steps",
  )


def train_supervised(
  config,
  backbone,
  random_vars,
  train,
  num_classes,
  *,
  num_steps,
  time_budget_s,
  mesh,
  should_stop=None,
):
  """`finetune` with the pretraining's optimizer, schedule, batch size and view-A crop + flip.

  Args:
    train: (images [N, S, S, 3] float32, labels [N] int32).
    num_steps: steps (None: the pretraining config's total); replaced by what fits
      `time_budget_s` seconds when that is set.

  Returns:
    `finetune`'s (Classifier variables, {"steps", "seconds", "final_loss"}).
  """
  from barlow_jax import data, optim

  train_x, train_y = train
  if num_steps is None:
    num_steps = optim.total_train_steps(config, data.steps_per_epoch(config))
  batch_size = round_to(min(int(config.batch_size), len(train_x)), mesh.size)
  return finetune(
    backbone,
    random_vars,
    random_batches(train_x, train_y, batch_size, seed=int(config.seed)),
    num_classes=num_classes,
    num_steps=int(num_steps),
    batch_size=batch_size,
    optimizer=functools.partial(_pretrain_optimizer, config, len(train_x) // batch_size),
    augment=crop_flip_kwargs(config.augment.view_a),
    time_budget_s=time_budget_s,
    seed=int(config.seed),
    mesh=mesh,
    on_step=_progress_callback("Supervised reference", should_stop),
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
