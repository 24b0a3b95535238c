"""The pretraining state: what a step changes, how it is built, saved, restored and exported.

`TrainState` holds the network's parameters and BatchNorm statistics, the optimizer's state and
the online linear probe's; its `step` is the data position. A checkpoint is the state's flax
state dict (`flax.serialization.to_state_dict`) written by `barlow_jax.checkpointing`, the owner
of the workdir's files; the backbone export is `checkpointing`'s backbone directory.
"""

from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from barlow_jax import checkpointing, models, optim, parallel
from barlow_jax.evaluation.linear_probe import linear_head_init


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes; the data position is `step` (updates done so far).

  Attributes:
    step: int32 scalar, number of updates applied.
    params: `{"backbone": ..., "projector": ...}` float32 parameters of `BarlowTwins`.
    batch_stats: BatchNorm running statistics, same layout.
    opt_state: state of `tx`.
    probe_params: online linear probe `{"kernel": [F, C], "bias": [C]}` ({} when disabled).
    probe_opt_state: state of `probe_tx` ({} when disabled).
    model, tx, probe_tx: static (not saved): the module and the two optax transformations.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  probe_params: Any
  probe_opt_state: Any
  model: models.BarlowTwins = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  probe_tx: optax.GradientTransformation | None = flax.struct.field(pytree_node=False)


def probe_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The online probe's optimizer: momentum-0.9 SGD at `config.online_probe_lr`, constant."""
  # The representation drifts under the probe while the backbone trains; a constant-lr momentum
  # SGD tracks it (a decaying schedule would freeze the probe on early features).
  return optax.sgd(float(config.online_probe_lr), momentum=0.9)


def create_train_state(
  config: ml_collections.ConfigDict,
  rng: jax.Array,
  *,
  mesh: Mesh | None = None,
  steps_per_epoch: int | None = None,
  num_classes: int = 0,
  tx: optax.GradientTransformation | None = None,
  shardings: Any = None,
) -> TrainState:
  """Initialises the model, the optimizer and (if `num_classes` > 0) the online probe.

  Args:
    config: run config (`barlow_jax.config.base_config()` layout).
    rng: PRNG key of the initialisation (e.g. `jax.random.key(config.seed)`).
    mesh: the state is placed on it with `parallel.state_shardings` (default: every device),
      its wide leaves sharded when `config.parallel.fsdp_min_size` > 0.
    steps_per_epoch: updates per epoch, for the learning-rate schedule of the optimizer built
      here when `tx` is not given.
    num_classes: classes of the online linear probe; 0 disables it.
    tx: the run's optimizer (`optim.create_optimizer(config, steps_per_epoch)[0]`), when the
      caller already built it.
    shardings: the state's shardings when the caller derived them (`RunSetup.state_shardings`);
      default: `parallel.state_shardings` of the state's shapes on `mesh`.

  Returns:
    A `TrainState` at step 0 on `mesh`.

  Raises:
    TypeError: neither `tx` nor `steps_per_epoch` given.
  """
  if tx is None:
    if steps_per_epoch is None:
      raise TypeError("create_train_state needs steps_per_epoch (or the optimizer as tx=)")
    tx, _ = optim.create_optimizer(config, steps_per_epoch)
  init, static = _state_init(config, num_classes, tx)
  if shardings is None:
    mesh = parallel.create_mesh() if mesh is None else mesh
    abstract = jax.eval_shape(init, rng)
    shardings = parallel.state_shardings(
      abstract, mesh, fsdp_min_size=parallel.fsdp_min_size(config)
    )
  else:
    shardings = shardings.replace(**static)
  return jax.jit(init, out_shardings=shardings)(rng)


def with_static_fields(shardings: TrainState, state: TrainState) -> TrainState:
  """`shardings` carrying `state`'s model and optimizers.

  They are the pytree's static metadata, and jit matches shardings to arguments by the whole
  tree: shardings derived once from another `TrainState` of the same shapes need them swapped.
  """
  return shardings.replace(model=state.model, tx=state.tx, probe_tx=state.probe_tx)


def abstract_train_state(
  config: ml_collections.ConfigDict, *, num_classes: int, tx: optax.GradientTransformation
) -> TrainState:
  """The `TrainState` of `create_train_state` as `jax.ShapeDtypeStruct`s: nothing allocated."""
  return jax.eval_shape(_state_init(config, num_classes, tx)[0], jax.random.key(0))


def _state_init(config, num_classes: int, tx):
  """(rng -> the initial `TrainState`, its static fields `{"model", "tx", "probe_tx"}`)."""
  model = models.create_model(config.model)
  probe_tx = probe_optimizer(config) if num_classes > 0 else None
  size = int(config.dataset.image_size)

  def init(rng):
    x = jnp.zeros((2, size, size, 3), jnp.float32)
    variables = model.init(rng, x, x, train=False)
    params = variables["params"]
    features = model.apply(variables, x, method=models.BarlowTwins.represent).shape[-1]
    if probe_tx is not None:
      probe_params = linear_head_init(jax.random.fold_in(rng, 1), features, num_classes)
      probe_opt_state = probe_tx.init(probe_params)
    else:
      probe_params, probe_opt_state = {}, {}
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      probe_params=probe_params,
      probe_opt_state=probe_opt_state,
      model=model,
      tx=tx,
      probe_tx=probe_tx,
    )

  return init, {"model": model, "tx": tx, "probe_tx": probe_tx}


# ---------------------------------------------------------------------------------------------
# Checkpoints and the backbone export (files: `barlow_jax.checkpointing`).


def save_state(manager, state: TrainState, step: int) -> None:
  """Saves `state` as checkpoint `step` of `manager` (asynchronously; every process calls it)."""
  checkpointing.save_checkpoint(manager, step, flax.serialization.to_state_dict(state))


def restore_state(
  manager,
  state: TrainState,
  mesh: Mesh,
  step: int,
  shardings: Any = None,
  *,
  fsdp_min_size: int = 0,
) -> TrainState:
  """Restores checkpoint `step` into the structure of `state`, onto `mesh`'s devices.

  The checkpoint may come from another device count or another `fsdp_min_size`: orbax reads
  each device's part of the whole saved arrays.

  Args:
    manager: `checkpointing.checkpoint_manager` of the workdir.
    state: a `TrainState` (or its `jax.eval_shape`) giving the structure.
    mesh: the devices to restore onto (any count, whatever count wrote the checkpoint).
    step: the checkpoint's step.
    shardings: the state's shardings (default: `parallel.state_shardings(state, mesh,
      fsdp_min_size=fsdp_min_size)`).
    fsdp_min_size: see `parallel.state_shardings`.
  """
  if shardings is None:
    shardings = parallel.state_shardings(state, mesh, fsdp_min_size=fsdp_min_size)
  restored = checkpointing.restore_checkpoint(
    manager,
    step,
    flax.serialization.to_state_dict(state),
    flax.serialization.to_state_dict(shardings),
  )
  return flax.serialization.from_state_dict(state, restored)


def backbone_of(state: TrainState) -> dict[str, Any]:
  """`{"params", "batch_stats"}` of the backbone in `state` (the arrays, not copies)."""
  return {
    "params": state.params["backbone"],
    "batch_stats": state.batch_stats.get("backbone", {}),
  }


def export_backbone(state: TrainState, config: ml_collections.ConfigDict, path: str) -> None:
  """Writes the backbone of `state` as a backbone directory at `path` (replacing one there).

  The format is `barlow_jax.checkpointing`'s; read it with `load_exported_backbone(path)` or
  `checkpointing.load_backbone` on any device count. Every process calls it.
  """
  # Whole arrays (gathered when FSDP split them).
  variables = parallel.replicate(backbone_of(state))
  checkpointing.save_backbone(path, variables, config.model.to_dict(), overwrite=True)


def load_exported_backbone(path: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(model config, `{"params", "batch_stats"}` as host arrays) of an `export_backbone` dir."""
  variables, model_config = checkpointing.load_backbone(path)
  return ml_collections.ConfigDict(model_config), variables
