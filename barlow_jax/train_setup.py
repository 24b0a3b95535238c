"""Everything a pretraining run derives from its config and workdir, derived once and passed on.

`prepare(config, workdir)` checks the config (`validate_pretraining`), everything the run will
read later (`preflight.check_pretraining`: the kNN monitor's and the final table's splits) and a
resumed workdir's record (`check_resume`: the same model and batch), then makes the workdir and
computes the run's constants: steps per epoch, total steps, the optimizer and its schedules (one
`optim.create_optimizer` call per run), the mesh, the online probe's class count, the network
(built once, by the validation), the state's recipe and shardings, `fsdp_min_size`, whether the
kNN monitor runs, the config record, the checkpoint manager and the step to resume from. What
runs downstream gets these values, not the config: the loop, the state, the export and the
record recompute nothing. Every error a user can fix is raised here or by
`pretrain_batches` (the first batch's shape), before anything compiles; an invocation refused
here writes nothing (the workdir's config record is written with the first checkpoint,
`checkpointing.write_config`).
"""

import contextlib
import dataclasses
import json
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
  metrics_file,
  models,
  optim,
  parallel,
  preflight,
  train_state,
)
from barlow_jax.config_validation import UserError
from barlow_jax.data import device_augment
from barlow_jax.evaluation import knn


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
    clock: the pretraining wall-time record (`metrics_file.PretrainingClock`).
    fsdp_min_size: `config.parallel.fsdp_min_size`, checked.
    state_shardings: the `TrainState`'s shardings on `mesh` (`parallel.state_shardings`): the
      state is created, restored and stepped with these.
    recipe: what the state is built from (`train_state.StateRecipe`: the network, `tx`, the
      probe's optimizer, the image size).
    knn_monitor: whether the kNN monitor runs (`knn.monitor_wanted`).
    step_views: what the train step does to the views (`device_augment.StepViews`).
    model_config: `config.model` as a plain dict (the backbone export's record).
    config_json, config_text: the config record's two files (`checkpointing.write_config_record`).
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
  clock: metrics_file.PretrainingClock
  fsdp_min_size: int
  state_shardings: Any
  recipe: train_state.StateRecipe
  knn_monitor: bool
  step_views: device_augment.StepViews
  model_config: dict[str, Any]
  config_json: str
  config_text: str


def log_plan(setup: RunSetup) -> None:
  """Logs what the run will do: its steps, devices, batch and starting step."""
  logging.info(
    "Training %d steps (%d per epoch) on %d devices (%d processes), global batch %d, from %d.",
    setup.total_steps,
    setup.steps_per_epoch,
    jax.device_count(),
    jax.process_count(),
    setup.config.batch_size,
    setup.start_step,
  )
  if setup.start_step >= setup.total_steps:
    logging.info(
      "%s holds the finished run (step %d): nothing to train.",
      setup.workdir,
      setup.start_step,
    )


def validate_pretraining(
  config: ml_collections.ConfigDict, *, devices: int | None = None, processes: int | None = None
) -> None:
  """Fails fast, before anything compiles, on pretraining settings the run cannot work with.

  Every key of the rule tables (`config_validation`), the global batch against this
  run's devices and processes, the model (backbone, stem, projector, predictor against the
  embedding), the on-device augmentation. The dataset (steps per epoch) and the optimizer are
  checked where they are built, also before compiling. `devices` / `processes` default to this
  run's (`jax.device_count()`, `jax.process_count()`); `python -m barlow_jax.benchmark compile`
  passes a TPU slice's chips and hosts.

  Raises:
    UserError: naming the config key and the fix.
  """
  _validated_model(config, devices=devices, processes=processes)


def _validated_model(config, *, devices: int | None, processes: int | None) -> models.BarlowTwins:
  """`validate_pretraining`, returning the network it built (the run's: built once)."""
  config_validation.validate_strings(config)
  with _user_errors():  # Names mean and std together; the views are the rule table's.
    device_augment.validate_normalisation(config.augment.mean, config.augment.std)
  config_validation.validate_numbers(config)
  batch = int(config.batch_size)
  devices = jax.device_count() if devices is None else int(devices)
  processes = jax.process_count() if processes is None else int(processes)
  if batch % devices:
    raise UserError(
      f"config.batch_size={batch} (the global batch) must be divisible by the {devices} devices "
      f"of this run; use a multiple of {devices}, e.g. {max(devices, batch // devices * devices)}."
    )
  if batch % processes:
    raise UserError(
      f"config.batch_size={batch} must be divisible by the {processes} processes of this run."
    )
  with _user_errors():
    return models.create_model(config.model)  # Builds the modules only: nothing initialised.


@contextlib.contextmanager
def _user_errors():
  """A ValueError of the settings checks inside becomes a `UserError` with its message."""
  try:
    yield
  except UserError:
    raise
  except ValueError as e:
    raise UserError(str(e)) from None


# The keys a checkpoint cannot be resumed with another value of: the model's (the parameters'
# shapes and what they mean) and the global batch (the data position is the step: another batch
# reads other examples at the same step, and scales the learning rate).
_RESUME_SECTIONS = ("model",)
_RESUME_KEYS = ("batch_size",)


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume `workdir`'s checkpoints with another `model.*` or `batch_size`.

  Compares the invocation with the workdir's record (config.json, written with the first
  checkpoint) before anything is restored or compiled. A workdir without checkpoints, or
  without a record, passes.

  Raises:
    UserError: "the checkpoint in W was written by a run with model.projector=32-32-32; this
      invocation asks for 64-64-64: ...".
  """
  if not workdir:  # checkpointing.prepare_workdir names the empty --workdir.
    return
  recorded = checkpointing.recorded_config(workdir)
  if recorded is None:
    return
  asked = json.loads(config.to_json_best_effort())
  pairs = [(k, recorded.get(k), asked.get(k)) for k in _RESUME_KEYS]
  for section in _RESUME_SECTIONS:
    before = recorded.get(section) or {}
    if section == "model":
      before = checkpointing.full_model_config(before)  # Keys added later: their defaults.
    now = asked.get(section) or {}
    pairs += [(f"{section}.{k}", before.get(k), now.get(k)) for k in sorted(set(before) | set(now))]
  for key, before, now in pairs:
    if before != now:
      raise UserError(
        f"the checkpoint in {workdir} was written by a run with {key}={_show(before)}; this "
        f"invocation asks for {_show(now)} (config.{key}): use a new workdir or the run's "
        f"settings (--config.{key}={_show(before)})."
      )


def _show(value) -> str:
  if isinstance(value, list):
    return "(" + ", ".join(str(v) for v in value) + ")"
  return str(value)


def prepare(config: ml_collections.ConfigDict, workdir: str) -> RunSetup:
  """Checks `config`, what the run reads later and `workdir`'s record, then derives the run.

  Raises:
    UserError: a config or workdir the run cannot use, naming the key or path (before anything
      compiles and before anything is written); a checkpoint past this config's length.
  """
  model = _validated_model(config, devices=None, processes=None)
  # The data and optimizer owners raise ValueErrors naming the key: settings, not bugs.
  with _user_errors():
    steps_per_epoch = data.steps_per_epoch(config)  # Unknown dataset, batch > split.
    total_steps = optim.total_train_steps(config, steps_per_epoch)
    tx, schedules = optim.create_optimizer(config, steps_per_epoch)
    # From the dataset, not from a batch: a rerun of a finished run has no batch to look at, and
    # the probe's presence is part of the checkpoint's structure.
    num_classes = data.num_classes(config) if config.online_probe else 0
  dataset = config.dataset
  knn_monitor = knn.monitor_wanted(
    int(config.eval_every_steps), dataset.eval_split, dataset.probe_split, num_classes
  )
  preflight.check_pretraining(config, knn_monitor=knn_monitor)
  check_resume(config, workdir)
  workdir = checkpointing.prepare_workdir(workdir)
  mesh = parallel.create_mesh()
  fsdp_min_size = int(config.parallel.fsdp_min_size)  # Checked by the rule table above.
  recipe = train_state.StateRecipe(
    model=model,
    tx=tx,
    image_size=int(dataset.image_size),
    num_classes=num_classes,
    probe_tx=train_state.probe_sgd(float(config.online_probe_lr)) if num_classes else None,
  )
  state_shardings = parallel.state_shardings(recipe.abstract(), mesh, fsdp_min_size=fsdp_min_size)
  manager = checkpointing.checkpoint_manager(workdir, max_to_keep=int(config.keep_checkpoints))
  start_step = int(manager.latest_step() or 0)
  clock = metrics_file.PretrainingClock(workdir, start_step)
  if start_step > total_steps:
    raise UserError(
      f"{workdir}/checkpoints holds step {start_step}, past this config's {total_steps} steps: "
      "use a new --workdir for a shorter run."
    )
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
    fsdp_min_size=fsdp_min_size,
    state_shardings=state_shardings,
    recipe=recipe,
    knn_monitor=knn_monitor,
    step_views=device_augment.step_views_of(config),
    model_config=config.model.to_dict(),
    config_json=config.to_json_best_effort(indent=2, sort_keys=True),
    config_text=str(config),
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
  state = setup.recipe.create(jax.random.key(int(setup.config.seed)), setup.state_shardings)
  if not setup.start_step:
    return state
  logging.info("Resuming from %s/checkpoints step %d.", setup.workdir, setup.start_step)
  state = train_state.restore_state(
    setup.manager,
    state,
    setup.mesh,
    setup.start_step,
    setup.state_shardings,
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
