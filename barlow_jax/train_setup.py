"""Everything a pretraining run derives from its config and workdir, derived once and passed on.

`prepare(config, workdir)` checks the config (`config_validation.validate_pretraining`), makes
the workdir, and computes the run's constants: steps per epoch, total steps, the optimizer and
its schedules (one `optim.create_optimizer` call per run), the mesh, the online probe's class
count, the checkpoint manager and the step to resume from. Every error a user can fix is raised
here or by `pretrain_batches` (the first batch's shape), before anything compiles.
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import optax
from absl import logging
from clu import metric_writers
from jax.sharding import Mesh

from barlow_jax import (
  checkpointing,
  config_validation,
  data,
  finish,
  metrics_file,
  optim,
  parallel,
  train_state,
)


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """A run's derived constants.

  Attributes:
    config: the run config. workdir: the run's directory (local paths absolute).
    mesh: every device of every process, one "data" axis.
    steps_per_epoch, total_steps: the run's length in updates.
    tx: the optimizer; schedules: its learning rates by step (`optim.create_optimizer`).
    num_classes: classes of the online probe (0: no probe).
    manager: the workdir's orbax checkpoint manager.
    start_step: the latest checkpoint's step (0 for a new run).
    clock: the pretraining wall-time record (`finish.PretrainingClock`).
  """

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  steps_per_epoch: int
  total_steps: int
  tx: optax.GradientTransformation
  schedules: dict[str, Callable[[int], Any]]
  num_classes: int
  manager: Any
  start_step: int
  clock: finish.PretrainingClock


def prepare(config: ml_collections.ConfigDict, workdir: str) -> RunSetup:
  """Checks `config`, prepares `workdir` (config record, checkpoints) and derives the run.

  Raises:
    ValueError: a config or workdir the run cannot use, naming the key or path (before anything
      compiles); a checkpoint past this config's length.
  """
  config_validation.validate_pretraining(config)
  workdir = checkpointing.prepare_workdir(workdir)
  steps_per_epoch = data.steps_per_epoch(config)  # Unknown dataset: ValueError.
  total_steps = optim.total_train_steps(config, steps_per_epoch)
  tx, schedules = optim.create_optimizer(config, steps_per_epoch)  # Bad settings: ValueError.
  mesh = parallel.create_mesh()
  checkpointing.write_config(config, workdir)
  manager = checkpointing.checkpoint_manager(workdir, max_to_keep=int(config.keep_checkpoints))
  start_step = int(manager.latest_step() or 0)
  clock = finish.PretrainingClock(workdir, start_step)
  if start_step > total_steps:
    raise ValueError(
      f"{workdir}/checkpoints holds step {start_step}, past this config's {total_steps} steps: "
      "use a new --workdir for a shorter run."
    )
  # From the dataset, not from a batch: a rerun of a finished run has no batch to look at, and
  # the probe's presence is part of the checkpoint's structure.
  num_classes = data.num_classes(config) if config.online_probe else 0
  if config.online_probe and not num_classes:
    logging.info("Online probe off: %s has no labels.", config.dataset.name)
  return RunSetup(
    config=config,
    workdir=workdir,
    mesh=mesh,
    steps_per_epoch=steps_per_epoch,
    total_steps=total_steps,
    tx=tx,
    schedules=schedules,
    num_classes=num_classes,
    manager=manager,
    start_step=start_step,
    clock=clock,
  )


def pretrain_batches(setup: RunSetup) -> Iterator[dict[str, jax.Array]]:
  """The run's global batches from `setup.start_step` on, prefetched to the devices.

  The first batch is read now and its views' shapes checked.

  Raises:
    ValueError: the input pipeline's views do not have the config's shape.
  """
  config = setup.config
  local_iter = data.create_pretrain_iterator(config, start_step=setup.start_step)
  first = next(local_iter) if setup.start_step < setup.total_steps else None
  local_batch = int(config.batch_size) // jax.process_count()
  if first is not None:
    size = int(config.dataset.image_size)
    for key in ("view_a", "view_b"):
      if tuple(first[key].shape) != (local_batch, size, size, 3):
        raise ValueError(
          f"the input pipeline gave {key} of shape {first[key].shape}, expected "
          f"{(local_batch, size, size, 3)} (config.batch_size / processes, image_size)."
        )

  def local_batches():
    if first is not None:
      yield first
    yield from local_iter

  return parallel.device_prefetch(local_batches(), setup.mesh, config.dataset.prefetch)


def initial_state(setup: RunSetup) -> train_state.TrainState:
  """The state at `setup.start_step`: initialised from `config.seed`, then restored if resuming.

  Raises:
    RuntimeError: the checkpoint holds another step than its name.
  """
  config = setup.config
  state = train_state.create_train_state(
    config,
    jax.random.key(int(config.seed)),
    mesh=setup.mesh,
    num_classes=setup.num_classes,
    tx=setup.tx,
  )
  if not setup.start_step:
    return state
  logging.info("Resuming from %s/checkpoints step %d.", setup.workdir, setup.start_step)
  state = train_state.restore_state(
    setup.manager,
    state,
    setup.mesh,
    setup.start_step,
    fsdp_min_size=parallel.fsdp_min_size(config),
  )
  if int(state.step) != setup.start_step:
    raise RuntimeError(f"checkpoint {setup.start_step} holds step {int(state.step)}")
  return state


def metric_writer(setup: RunSetup) -> metric_writers.MetricWriter:
  """Where the loop's metrics go: the log, TensorBoard events and metrics.jsonl (process 0).

  The values are global (every process holds the same), so only process 0 writes them; a
  rerun of a finished run writes no new events file. The config goes to TensorBoard's hparams
  at step 0.
  """
  if jax.process_index() == 0 and setup.start_step < setup.total_steps:
    writer = metric_writers.MultiWriter(
      [
        metric_writers.create_default_writer(setup.workdir, asynchronous=True),
        metrics_file.JsonlWriter(setup.workdir, purge_step=setup.start_step),
      ]
    )
  else:
    writer = metric_writers.MultiWriter([])
  if setup.start_step == 0:
    writer.write_hparams(flat_hparams(setup.config))
  return writer


def flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config` as `{"dotted.key": bool | int | float | str}` (anything else as its str)."""
  flat = {}

  def visit(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, ml_collections.ConfigDict):
        visit(name + ".", value)
      elif isinstance(value, bool | int | float | str):
        flat[name] = value
      else:
        flat[name] = str(value)

  visit("", config)
  return flat
