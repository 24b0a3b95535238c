"""The pretraining state: what a step changes, how it is built, saved, restored and exported.

`TrainState` holds the network's parameters and BatchNorm statistics, the optimizer's state and
the online linear probe's; its `step` is the data position. A checkpoint is the state's flax
state dict (`flax.serialization.to_state_dict`) written by `barlow_jax.checkpointing`, the owner
of the workdir's files; the backbone export is `checkpointing`'s backbone directory.
"""

import dataclasses
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
  """The online probe's optimizer: `probe_sgd(config.online_probe_lr)`."""
  return probe_sgd(float(config.online_probe_lr))


def probe_sgd(lr: float) -> optax.GradientTransformation:
  """The online probe's optimizer: momentum-0.9 SGD at learning rate `lr`, constant."""
  # The representation drifts under the probe while the backbone trains; a constant-lr momentum
  # SGD tracks it (a decaying schedule would freeze the probe on early features).
  return optax.sgd(float(lr), momentum=0.9)


@dataclasses.dataclass(frozen=True)
class StateRecipe:
  """What the initial `TrainState` is made of, as plain values: no config.

  The run's setup (`train_setup.prepare`) builds it once from the checked config, and derives
  the state's shapes (`abstract`), its shardings and the state itself (`create`) from it.

  Attributes:
    model: the network (`models.create_model(config.model)`).
    tx: the run's optimizer (`optim.create_optimizer`).
    image_size: the views' side S in pixels (`config.dataset.image_size`).
    num_classes: classes of the online linear probe; 0 disables it.
    probe_tx: the probe's optimizer (`probe_sgd`); None without the probe.
  """

  model: models.BarlowTwins
  tx: optax.GradientTransformation
  image_size: int
  num_classes: int = 0
  probe_tx: optax.GradientTransformation | None = None

  def init(self, rng: jax.Array) -> TrainState:
    """The `TrainState` at step 0 initialised from `rng` (unplaced: jit it to place it)."""
    model, probe_tx, size = self.model, self.probe_tx, int(self.image_size)
    x = jnp.zeros((2, size, size, 3), jnp.float32)
    variables = model.init(rng, x, x, train=False)
    params = variables["params"]
    features = model.apply(variables, x, method=models.BarlowTwins.represent).shape[-1]
    if probe_tx is not None:
      probe_params = linear_head_init(jax.random.fold_in(rng, 1), features, self.num_classes)
      probe_opt_state = probe_tx.init(probe_params)
    else:
      probe_params, probe_opt_state = {}, {}
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=self.tx.init(params),
      probe_params=probe_params,
      probe_opt_state=probe_opt_state,
      model=model,
      tx=self.tx,
      probe_tx=probe_tx,
    )

  def abstract(self) -> TrainState:
    """The state of `init` as `jax.ShapeDtypeStruct`s: nothing allocated."""
    return jax.eval_shape(self.init, jax.random.key(0))

  def create(self, rng: jax.Array, shardings: TrainState) -> TrainState:
    """`init(rng)` jitted straight onto `shardings` (e.g. `parallel.state_shardings` of
    `abstract()`): no leaf is ever whole on one device when FSDP splits it."""
    static = {"model": self.model, "tx": self.tx, "probe_tx": self.probe_tx}
    return jax.jit(self.init, out_shardings=shardings.replace(**static))(rng)


def state_recipe(
  config: ml_collections.ConfigDict, *, num_classes: int, tx: optax.GradientTransformation
) -> StateRecipe:
  """The `StateRecipe` of `config` (`model`, `dataset.image_size`, `online_probe_lr`)."""
  return StateRecipe(
    model=models.create_model(config.model),
    tx=tx,
    image_size=int(config.dataset.image_size),
    num_classes=num_classes,
    probe_tx=probe_optimizer(config) if num_classes > 0 else None,
  )


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
  recipe = state_recipe(config, num_classes=num_classes, tx=tx)
  if shardings is None:
    mesh = parallel.create_mesh() if mesh is None else mesh
    shardings = parallel.state_shardings(
      recipe.abstract(), mesh, fsdp_min_size=parallel.fsdp_min_size(config)
    )
  return recipe.create(rng, shardings)


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
  return state_recipe(config, num_classes=num_classes, tx=tx).abstract()


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
  write_backbone(state, config.model.to_dict(), path)


def write_backbone(state: TrainState, model_config: dict[str, Any], path: str) -> None:
  """`export_backbone` with the model's config as a plain dict (`config.model.to_dict()`)."""
  # Whole arrays (gathered when FSDP split them).
  variables = parallel.replicate(backbone_of(state))
  checkpointing.save_backbone(path, variables, model_config, overwrite=True)


def load_exported_backbone(path: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(model config, `{"params", "batch_stats"}` as host arrays) of an `export_backbone` dir."""
  variables, model_config = checkpointing.load_backbone(path)
  return ml_collections.ConfigDict(model_config), variables
