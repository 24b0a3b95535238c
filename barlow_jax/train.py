"""Pretraining: one config, every device of every host, resumable, observable.

    python -m barlow_jax.main --config=configs/cluttered_digits.py --workdir=workdirs/cd

Parallelism: one `jax.jit` over a `Mesh` of all devices with a single axis `"data"`. The global
batch is sharded on its first axis (`NamedSharding(mesh, P("data"))`) and assembled from the
process-local NumPy batches of the input pipeline with `jax.make_array_from_process_local_data`;
the train state is replicated, or its wide leaves split over the devices with
`config.parallel.fsdp_min_size` (FSDP, `barlow_jax.parallel`). Under sharded `jit` every batch
statistic, in the BatchNorms of the network and in the normalisation inside the loss, is over the
global batch without an `axis_name`, and `jax.grad` of the global loss is the true gradient
(docs/reference.md §3 explains why the reference's is 1/W of it: `config.optim.gradient_scale`).

The workdir is the run (layout and formats: `barlow_jax.checkpointing`): config.txt/json,
checkpoints/<step>/ (the whole `TrainState`, async, the last `config.keep_checkpoints`, every
`config.checkpoint_every_steps`, at the end and on SIGTERM), pretraining.json (its wall time),
TensorBoard events, and at the end backbone/ and the results table (`barlow_jax.finish`). All of
it reads back on any device count.

Running the same command again resumes from the latest checkpoint. The data position is the step
(the input pipeline's `start_step` replays exactly the batches k, k+1, ...) and nothing else in a
step is random (augmentations are seeded on the host from (seed, epoch, example, view), or, with
`config.augment.on_device`, inside the step from (seed, step, example, view); the network has no
dropout), so an interrupted-and-resumed run ends with the parameters of an uninterrupted one.
"""

import collections
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import (
  checkpointing,
  config_validation,
  finish,
  losses,
  models,
  monitors,
  optim,
  parallel,
  progress,
)
from barlow_jax.data import device_augment

# Side of the C heatmaps written to TensorBoard.
HEATMAP_SIZE = 64
# How often (in steps) the processes of a multi-process run agree on whether one got SIGTERM.
_PREEMPTION_SYNC_EVERY = 10


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient became NaN or inf; the run stopped without saving that state."""


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


@dataclasses.dataclass
class TrainResult:
  """What `train_and_evaluate` returns.

  Attributes:
    state: the final `TrainState` (on the devices).
    step: updates done (== total steps unless preempted).
    total_steps: the run's length.
    preempted: True when SIGTERM stopped the run: in pretraining (a checkpoint at `step` was
      saved) or in the final evaluation (`step == total_steps`; nothing of it was written).
    num_compiles: how many times the train step was traced (1 in a healthy run).
    history: `[(step, scalars)]` of every logged step of this invocation.
    evaluation: the end-of-run evaluation's results (None when not run).
  """

  state: TrainState
  step: int
  total_steps: int
  preempted: bool
  num_compiles: int
  history: list[tuple[int, dict[str, float]]]
  evaluation: Any = None


# ---------------------------------------------------------------------------------------------
# Mesh, shardings and global batches.


create_mesh = parallel.create_mesh


def state_shardings(state, mesh: Mesh, *, fsdp_min_size: int = 0):
  """Shardings of a `TrainState` (or its abstract shapes): `parallel.state_shardings`.

  Everything replicated with the default `fsdp_min_size=0`; `train_step` needs no change when
  leaves are sharded, jit inserts the gathers.
  """
  return parallel.state_shardings(state, mesh, fsdp_min_size=fsdp_min_size)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over devices on their first axis."""
  return NamedSharding(mesh, P("data"))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's rows (first axis = local batch; works single-process)."""
  sharding = batch_sharding(mesh)
  return {
    key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for key, value in local_batch.items()
  }


def _device_prefetch(iterator: Iterator, mesh: Mesh, size: int) -> Iterator:
  """Keeps `size` global batches in flight so host-to-device copies overlap the step."""
  queue = collections.deque()
  size = max(int(size), 1)

  def enqueue(n):
    for _ in range(n):
      try:
        queue.append(global_batch(next(iterator), mesh))
      except StopIteration:
        return

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


# ---------------------------------------------------------------------------------------------
# State and step.


def create_train_state(
  config: ml_collections.ConfigDict,
  rng: jax.Array,
  *,
  mesh: Mesh | None = None,
  steps_per_epoch: int,
  num_classes: int = 0,
) -> TrainState:
  """Initialises the model, the optimizer and (if `num_classes` > 0) the online probe.

  Args:
    config: run config (`barlow_jax.config.base_config()` layout).
    rng: PRNG key of the initialisation (e.g. `jax.random.key(config.seed)`).
    mesh: the state is placed on it with `state_shardings` (default: `create_mesh()`), its wide
      leaves sharded when `config.parallel.fsdp_min_size` > 0.
    steps_per_epoch: updates per epoch (for the learning-rate schedule).
    num_classes: classes of the online linear probe; 0 disables it.

  Returns:
    A `TrainState` at step 0 on `mesh`.
  """
  mesh = create_mesh() if mesh is None else mesh
  model = models.create_model(config.model)
  tx, _ = optim.create_optimizer(config, steps_per_epoch)
  probe_tx = _probe_optimizer(config) if num_classes > 0 else None
  size = int(config.dataset.image_size)

  def init(rng):
    x = jnp.zeros((2, size, size, 3), jnp.float32)
    variables = model.init(rng, x, x, train=False)
    params = variables["params"]
    features = model.apply(variables, x, method=models.BarlowTwins.represent).shape[-1]
    if probe_tx is not None:
      # docs/reference.md §5's linear-probe initialisation: weights N(0, 0.01), bias 0.
      kernel = 0.01 * jax.random.normal(jax.random.fold_in(rng, 1), (features, num_classes))
      probe_params = {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}
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

  abstract = jax.eval_shape(init, rng)
  shardings = state_shardings(abstract, mesh, fsdp_min_size=parallel.fsdp_min_size(config))
  return jax.jit(init, out_shardings=shardings)(rng)


def _probe_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  # The representation drifts under the probe while the backbone trains; a constant-lr momentum
  # SGD tracks it (a decaying schedule would freeze the probe on early features).
  return optax.sgd(float(config.online_probe_lr), momentum=0.9)


def _global_norm(tree) -> jax.Array:
  return optax.global_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def effective_rank(x: jax.Array) -> jax.Array:
  """exp(entropy of the normalised singular values) of x [N, F] (RankMe); 1 when collapsed."""
  s = jnp.linalg.svd(x.astype(jnp.float32), compute_uv=False)
  p = s / jnp.maximum(jnp.sum(s), 1e-12)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.exp(entropy)


def _monitors(config, representation, z_a, z_b) -> dict[str, jax.Array]:
  z_a = z_a.astype(jnp.float32)
  # C a slab at a time: whole, it is 16 GiB per device at D = 65536.
  summary = monitors.correlation_summary(
    z_a, z_b.astype(jnp.float32), eps=float(config.loss.eps), heatmap_size=HEATMAP_SIZE
  )
  return {
    "embedding_std": jnp.mean(jnp.std(z_a, axis=0)),
    "corr_diag_mean": jnp.mean(summary["diag"]),
    "corr_offdiag_abs_mean": summary["offdiag_abs_mean"],
    "representation_rank": effective_rank(representation),
    "heatmap_first": summary["heatmap_first"],
    "heatmap_block_rms": summary["heatmap_block_rms"],
  }


def train_step(
  state: TrainState, batch: Mapping[str, jax.Array], monitor: jax.Array | bool, *, config
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update of the network (and of the online probe) on a global batch.

  Args:
    state: the current `TrainState`.
    batch: `{"view_a": [B, S, S, 3], "view_b": same, "label": [B] int (optional)}`, B the
      global batch (sharded over devices under jit). Views are uint8 crops (normalised here,
      and colour-augmented here with `config.augment.on_device`) or already normalised floats
      (`device_augment.prepare_views`).
    monitor: bool scalar; when true the collapse monitors and heatmaps of C are computed too
      (an SVD of the representations: only on the steps that log them). A traced argument, so
      switching it does not recompile.
    config: the run config (static: loss options, online probe).

  Returns:
    `(new_state, metrics)`: float32 scalars `loss`, `invariance`, `redundancy`, `grad_norm`,
    `param_norm`, (`probe_loss`, `probe_accuracy` with the probe), `embedding_std`,
    `corr_diag_mean`, `corr_offdiag_abs_mean`, `representation_rank` (0 when `monitor` is false)
    and `heatmap_first` / `heatmap_block_rms` [64, 64] pictures of C.
  """
  model = state.model
  loss_config = config.loss
  view_a, view_b = device_augment.prepare_views(batch, state.step, config=config)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    (rep_a, _, z_a, z_b), updates = model.apply(
      variables, view_a, view_b, train=True, mutable=["batch_stats"]
    )
    # The loss and C in float32 whatever the compute dtype (docs/reference.md §3).
    terms = losses.barlow_twins_loss_terms(
      z_a.astype(jnp.float32),
      z_b.astype(jnp.float32),
      lambd=float(loss_config.lambd),
      variant=loss_config.variant,
      method=loss_config.method,
      eps=float(loss_config.eps),
      temperature=float(loss_config.temperature),
    )
    return terms["loss"], (terms, updates["batch_stats"], rep_a, z_a, z_b)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, (terms, batch_stats, rep_a, z_a, z_b)), grads = grad_fn(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {k: v.astype(jnp.float32) for k, v in terms.items()}
  metrics["grad_norm"] = _global_norm(grads)
  metrics["param_norm"] = _global_norm(params)

  probe_params, probe_opt_state = state.probe_params, state.probe_opt_state
  if state.probe_tx is not None and "label" in batch:
    features = jax.lax.stop_gradient(rep_a).astype(jnp.float32)
    labels = batch["label"].astype(jnp.int32)

    def probe_loss_fn(p):
      logits = features @ p["kernel"] + p["bias"]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return jnp.mean(ce), logits

    (probe_loss, logits), probe_grads = jax.value_and_grad(probe_loss_fn, has_aux=True)(
      probe_params
    )
    probe_updates, probe_opt_state = state.probe_tx.update(
      probe_grads, probe_opt_state, probe_params
    )
    probe_params = optax.apply_updates(probe_params, probe_updates)
    metrics["probe_loss"] = probe_loss
    metrics["probe_accuracy"] = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))

  monitor_args = (jax.lax.stop_gradient(rep_a), jax.lax.stop_gradient(z_a), z_b)
  monitor_fn = lambda *a: _monitors(config, *a)
  skipped = jax.eval_shape(monitor_fn, *monitor_args)
  zeros = lambda *a: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), skipped)
  metrics.update(jax.lax.cond(jnp.asarray(monitor), monitor_fn, zeros, *monitor_args))

  new_state = state.replace(
    step=state.step + 1,
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    probe_params=probe_params,
    probe_opt_state=probe_opt_state,
  )
  return new_state, metrics


class _TracedStep:
  """`train_step` under jit over `mesh`, with a count of its traces (each is a compilation)."""

  def __init__(self, config, mesh: Mesh, state: TrainState):
    self.num_traces = 0

    def step(state, batch, monitor):
      self.num_traces += 1
      return train_step(state, batch, monitor, config=config)

    shardings = state_shardings(state, mesh, fsdp_min_size=parallel.fsdp_min_size(config))
    self._fn = jax.jit(
      step,
      in_shardings=(shardings, batch_sharding(mesh), NamedSharding(mesh, P())),
      out_shardings=(shardings, NamedSharding(mesh, P())),
      donate_argnums=(0,),
    )

  def __call__(self, state, batch, monitor: bool):
    before = self.num_traces
    out = self._fn(state, batch, np.bool_(monitor))
    if self.num_traces > before and self.num_traces > 1:
      shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), batch)
      logging.warning(
        "train_step compiled again (%d compilations so far) for batch %s: something changed "
        "shape, dtype or sharding between steps; every recompilation costs a full compile.",
        self.num_traces,
        shapes,
      )
    return out

  def lower(self, state, batch, monitor: bool = False):
    """The jitted step lowered for these arguments (`.cost_analysis()`, `.compile()`)."""
    return self._fn.lower(state, batch, np.bool_(monitor))


def jit_train_step(config, mesh: Mesh, state: TrainState) -> _TracedStep:
  """`train_step` jitted over `mesh` as the trainer runs it (state donated, batch sharded).

  Call it as `step(state, batch, monitor) -> (state, metrics)`; `step.lower(state, batch)` gives
  XLA's view of it; `step.num_traces` counts compilations.
  """
  return _TracedStep(config, mesh, state)


def device_prefetch(iterator: Iterator, mesh: Mesh, size: int) -> Iterator:
  """Global batches from an iterator of process-local batches, `size` of them in flight."""
  return _device_prefetch(iterator, mesh, size)


# ---------------------------------------------------------------------------------------------
# Config checks, workdir, checkpoints.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, before anything compiles, on settings the run cannot work with."""
  batch, devices, processes = int(config.batch_size), jax.device_count(), jax.process_count()
  if batch < 1:
    raise ValueError(f"config.batch_size must be >= 1, got {batch}.")
  if batch % devices:
    raise ValueError(
      f"config.batch_size={batch} (the global batch) must be divisible by the {devices} devices "
      f"of this run; use a multiple of {devices}, e.g. {max(devices, batch // devices * devices)}."
    )
  if batch % processes:
    raise ValueError(
      f"config.batch_size={batch} must be divisible by the {processes} processes of this run."
    )
  models.parse_projector_sizes(config.model.projector)
  parallel.fsdp_min_size(config)
  models.backbone_features(config.model)  # Unknown backbone / stem / dtype: ValueError.
  device_augment.validate_config(config)
  config_validation.validate_numbers(config)  # Every numeric key: its range or its sentinel.


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and checks it is writable; returns it (local: absolute).

  `workdir` is a local directory or a bucket location (gs://bucket/run): every file of the run
  goes through etils.epath, orbax and TensorFlow's file system, which all speak gs://.

  Raises:
    ValueError: naming the workdir when it is empty or cannot be written.
  """
  import tensorflow as tf

  if not workdir:
    raise ValueError("--workdir is empty: give a directory for the run's checkpoints and logs.")
  if "://" not in workdir:
    workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    if "://" in workdir:
      # Checked first: TensorFlow's gs:// file system hangs making directories in, or closing
      # a file of, a missing bucket. Buckets have no directories to make.
      scheme, rest = workdir.split("://", 1)
      bucket = f"{scheme}://{rest.split('/', 1)[0]}"
      if not epath.Path(bucket).exists():
        raise ValueError(
          f"--workdir={workdir}: the bucket {bucket} does not exist or these credentials cannot "
          "see it; create it (gcloud storage buckets create) or fix the name."
        )
    else:
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    probe = epath.Path(workdir) / f".write_test.{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except (OSError, tf.errors.OpError) as e:
    reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    raise ValueError(
      f"--workdir={workdir} is not a writable directory ({reason}); choose another path, fix its "
      "permissions, or (gs://) check the bucket exists and your credentials may write it."
    ) from e
  return workdir


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The run's config, written once: a rerun with other settings keeps the original record."""
  if jax.process_index() != 0:
    return
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  json_path = os.path.join(workdir, checkpointing.CONFIG_JSON)
  before = checkpointing.read_json(json_path)
  if before is not None:
    changed = _changed_keys(before, json.loads(text))
    if changed:
      logging.warning(
        "This invocation's config differs from %s in %s; the file keeps the settings the run "
        "started with.",
        json_path,
        ", ".join(changed[:10]) + (" ..." if len(changed) > 10 else ""),
      )
    return
  checkpointing.write_text(os.path.join(workdir, checkpointing.CONFIG_TEXT), str(config))
  checkpointing.write_text(json_path, text)


def _changed_keys(before, after, prefix: str = "") -> list[str]:
  if isinstance(before, dict) and isinstance(after, dict):
    out = []
    for key in sorted(set(before) | set(after)):
      out += _changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")
    return out
  return [] if before == after else [prefix.rstrip(".")]


def _checkpoint_manager(workdir: str, config: ml_collections.ConfigDict):
  return checkpointing.checkpoint_manager(workdir, max_to_keep=int(config.keep_checkpoints))


def _save(manager, state: TrainState, step: int) -> None:
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
    shardings: the state's shardings (default: `state_shardings(state, mesh, fsdp_min_size)`).
    fsdp_min_size: see `state_shardings`.
  """
  if shardings is None:
    shardings = state_shardings(state, mesh, fsdp_min_size=fsdp_min_size)
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


# ---------------------------------------------------------------------------------------------
# Preemption.


class _PreemptionFlag:
  """Turns SIGTERM into a request to save and stop at the next step boundary.

  In a multi-process run the processes agree every `_PREEMPTION_SYNC_EVERY` steps (the same
  steps everywhere), so all of them save the same step.
  """

  def __init__(self):
    self.received = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: stopping at the next step (saved) or evaluation phase.")
    self.received = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.received
    if step % _PREEMPTION_SYNC_EVERY:
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(self.received, np.int32))
    return bool(np.any(flags))

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ---------------------------------------------------------------------------------------------
# Metrics.


def _heatmap_image(c: np.ndarray, *, vmax: float = 1.0) -> np.ndarray:
  """[K, K] values in [-vmax, vmax] -> [1, K, K, 3] RGB in [0, 1]: blue < 0 < red, white at 0."""
  v = np.clip(np.asarray(c, np.float32) / vmax, -1.0, 1.0)
  pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
  rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)
  # Nearest-neighbour upsampling so a 64x64 matrix is not blurred by TensorBoard.
  scale = max(1, 256 // rgb.shape[0])
  rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
  return rgb[None]


def _knn_monitor(state: TrainState, config: ml_collections.ConfigDict, mesh: Mesh) -> float:
  """Weighted kNN top-1 of the current backbone: probe split -> eval split (eval-mode BN).

  Features of both splits are computed on the mesh from global batches (every process feeds its
  shard) and replicated, so every process computes the same accuracy.
  """
  from barlow_jax import data as input_pipeline
  from barlow_jax import evaluate

  variables = {"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]}
  variables = parallel.replicate(variables, mesh)
  replicated = NamedSharding(mesh, P())

  def represent(variables, batch):
    features = state.model.backbone.apply(variables, batch["image"], train=False)
    return features.astype(jnp.float32), batch["label"], batch["mask"]

  represent = jax.jit(
    represent, in_shardings=(replicated, batch_sharding(mesh)), out_shardings=replicated
  )
  out = []
  for split in (config.dataset.probe_split, config.dataset.eval_split):
    features, labels = [], []
    for local in input_pipeline.create_eval_iterator(
      config, split, batch_size=int(config.batch_size)
    ):
      feats, label, mask = jax.device_get(represent(variables, global_batch(local, mesh)))
      features.append(feats[mask])
      labels.append(label[mask])
    out.append((np.concatenate(features), np.concatenate(labels)))
  (train_x, train_y), (test_x, test_y) = out
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  return float(
    evaluate.knn_accuracy(
      train_x,
      train_y,
      test_x,
      test_y,
      k=int(config.eval.knn_k),
      temperature=float(config.eval.knn_temperature),
      num_classes=num_classes,
    )
  )


# ---------------------------------------------------------------------------------------------
# The run.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Pretrains (resuming from `workdir` when it holds a checkpoint), exports, evaluates.

  Args:
    config: run config (`barlow_jax.config.base_config()` layout; see `configs/`).
    workdir: the run's directory (created if missing).

  Returns:
    A `TrainResult` (final state, steps, whether SIGTERM stopped it, compilations, logged
    metrics, evaluation results).

  Raises:
    ValueError: a config or workdir the run cannot use (before anything compiles).
    NonFiniteLossError: the loss or gradient became NaN / inf; names the step; the last
      checkpoint written before it is kept.
  """
  # SIGTERM from here on saves and stops (during start-up: stops before the first step).
  preemption = _PreemptionFlag()
  try:
    return _train_and_evaluate(config, workdir, preemption)
  finally:
    preemption.restore()


def _train_and_evaluate(config, workdir: str, preemption: _PreemptionFlag) -> TrainResult:
  from clu import metric_writers

  from barlow_jax import data as input_pipeline

  validate_config(config)
  workdir = prepare_workdir(workdir)
  steps_per_epoch = input_pipeline.steps_per_epoch(config)  # Unknown dataset: ValueError.
  total_steps = optim.total_train_steps(config, steps_per_epoch)
  optim.create_optimizer(config, steps_per_epoch)  # Bad optimizer settings: ValueError now.
  mesh = create_mesh()
  _write_config(config, workdir)

  manager = _checkpoint_manager(workdir, config)
  start_step = int(manager.latest_step() or 0)
  clock = finish.PretrainingClock(workdir, start_step)
  if start_step > total_steps:
    raise ValueError(
      f"{workdir}/checkpoints holds step {start_step}, past this config's {total_steps} steps: "
      "use a new --workdir for a shorter run."
    )
  local_iter = input_pipeline.create_pretrain_iterator(config, start_step=start_step)
  first = next(local_iter) if start_step < total_steps else None
  local_batch = int(config.batch_size) // jax.process_count()
  if first is not None:
    size = int(config.dataset.image_size)
    for key in ("view_a", "view_b"):
      if tuple(first[key].shape) != (local_batch, size, size, 3):
        raise ValueError(
          f"the input pipeline gave {key} of shape {first[key].shape}, expected "
          f"{(local_batch, size, size, 3)} (config.batch_size / processes, image_size)."
        )
  # From the dataset, not from a batch: a rerun of a finished run has no batch to look at, and
  # the probe's presence is part of the checkpoint's structure.
  num_classes = input_pipeline.num_classes(config) if config.online_probe else 0
  if config.online_probe and not num_classes:
    logging.info("Online probe off: %s has no labels.", config.dataset.name)

  rng = jax.random.key(int(config.seed))
  state = create_train_state(
    config, rng, mesh=mesh, steps_per_epoch=steps_per_epoch, num_classes=num_classes
  )
  if start_step:
    logging.info("Resuming from %s/checkpoints step %d.", workdir, start_step)
    state = restore_state(
      manager, state, mesh, start_step, fsdp_min_size=parallel.fsdp_min_size(config)
    )
    if int(state.step) != start_step:
      raise RuntimeError(f"checkpoint {start_step} holds step {int(state.step)}")
  _, schedules = optim.create_optimizer(config, steps_per_epoch)
  step_fn = _TracedStep(config, mesh, state)

  is_main = jax.process_index() == 0
  # Metrics come from process 0 alone (the values are global: every process holds the same).
  # A rerun of a finished run writes no new events file.
  if is_main and start_step < total_steps:
    writer = metric_writers.create_default_writer(workdir, asynchronous=True)
  else:
    writer = metric_writers.MultiWriter([])
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  logging.info(
    "Training %d steps (%d per epoch) on %d devices (%d processes), global batch %d, from %d.",
    total_steps,
    steps_per_epoch,
    jax.device_count(),
    jax.process_count(),
    config.batch_size,
    start_step,
  )

  def local_batches():
    if first is not None:
      yield first
    yield from local_iter

  batches = _device_prefetch(local_batches(), mesh, config.dataset.prefetch)
  history: list[tuple[int, dict[str, float]]] = []
  last_saved = start_step
  preempted = False
  pending = None  # (step, metrics) not yet checked for NaN (checked one step late: no stall).
  log_every, image_every = int(config.log_every_steps), int(config.image_every_steps)
  eval_every = int(config.eval_every_steps)
  window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
  run_start, run_start_step = window_start, start_step
  monitor_seconds = 0.0

  def save(step: int) -> None:
    _save(manager, state, step)
    clock.saved(step, time.perf_counter() - run_start - monitor_seconds, total_steps=total_steps)

  def check_finite(step: int, metrics) -> None:
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      manager.wait_until_finished()
      raise NonFiniteLossError(
        f"Non-finite training loss at step {step} (loss={loss}, grad_norm={grad_norm}): "
        f"stopping. Nothing from this step was saved; the last good checkpoint is step "
        f"{manager.latest_step()} in {workdir}/checkpoints. Lower the learning rate "
        "(config.optim.lr_weights / lr_biases) or check the input data, then rerun the same "
        "command to resume from that checkpoint."
      )

  try:
    step = start_step
    while step < total_steps:
      if preemption.should_stop(step):
        if pending is not None:
          check_finite(*pending)
          pending = None
        if step != last_saved:
          save(step)
          last_saved = step
        preempted = True
        logging.warning("Preempted: saved step %d in %s/checkpoints; exiting.", step, workdir)
        break
      t0 = time.perf_counter()
      batch = next(batches)
      window_wait += time.perf_counter() - t0
      done = step + 1
      is_log = done % log_every == 0 or done == total_steps
      is_image = image_every > 0 and done % image_every == 0
      state, metrics = step_fn(state, batch, is_log or is_image)
      if pending is not None:
        check_finite(*pending)
      pending = (done, metrics)
      step = done
      window_steps += 1

      if is_log or is_image:
        check_finite(*pending)
        pending = None
        host = jax.device_get(metrics)
        now = time.perf_counter()
        elapsed = now - window_start
        scalars = {k: float(v) for k, v in host.items() if not k.startswith("heatmap_")}
        images_per_s = window_steps * int(config.batch_size) / max(elapsed, 1e-9)
        scalars["lr_weights"] = float(schedules["lr_weights"](done - 1))
        scalars["lr_biases"] = float(schedules["lr_biases"](done - 1))
        scalars["images_per_second"] = images_per_s
        scalars["images_per_second_per_device"] = images_per_s / jax.device_count()
        scalars["input_wait_fraction"] = window_wait / max(elapsed, 1e-9)
        scalars["epoch"] = done / steps_per_epoch
        if is_log:
          history.append((done, scalars))
          writer.write_scalars(done, scalars)
          if is_main:
            rate = (done - run_start_step) / max(now - run_start - monitor_seconds, 1e-9)
            logging.info(
              "step %d/%d (%.1f%%)  loss %.4g  %.0f img/s (%.0f/device)  input wait %.0f%%  ETA %s",
              done,
              total_steps,
              100.0 * done / total_steps,
              scalars["loss"],
              images_per_s,
              scalars["images_per_second_per_device"],
              100.0 * scalars["input_wait_fraction"],
              progress.format_duration((total_steps - done) / max(rate, 1e-9)),
            )
        if is_image:
          writer.write_images(
            done,
            {
              "cross_correlation/first_features": _heatmap_image(host["heatmap_first"]),
              "cross_correlation/block_rms": _heatmap_image(host["heatmap_block_rms"]),
            },
          )
        window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0

      if done % int(config.checkpoint_every_steps) == 0 or done == total_steps:
        if pending is not None:
          check_finite(*pending)
          pending = None
        save(done)
        last_saved = done

      if eval_every and (done % eval_every == 0 or done == total_steps):
        if config.dataset.eval_split and config.dataset.probe_split and num_classes:
          t0 = time.perf_counter()
          accuracy = _knn_monitor(state, config, mesh)
          monitor_seconds += time.perf_counter() - t0
          window_start = time.perf_counter()
          writer.write_scalars(done, {"knn_accuracy": accuracy})
          logging.info("step %d: kNN top-1 %.2f%%", done, 100.0 * accuracy)
          if history and history[-1][0] == done:
            history[-1][1]["knn_accuracy"] = accuracy
    if pending is not None:
      check_finite(*pending)
  finally:
    manager.wait_until_finished()
    writer.flush()
  # Pretraining wall time of this invocation (compilation included, kNN monitor excluded).
  train_seconds = time.perf_counter() - run_start - monitor_seconds

  if step_fn.num_traces > 1:
    logging.warning("train_step was compiled %d times in this run.", step_fn.num_traces)
  result = TrainResult(
    state=state,
    step=step,
    total_steps=total_steps,
    preempted=preempted,
    num_compiles=step_fn.num_traces,
    history=history,
  )
  if preempted:
    manager.close()
    writer.close()
    return result
  if last_saved != total_steps:
    _save(manager, state, total_steps)
  manager.wait_until_finished()
  manager.close()
  # Written once, when the last checkpoint is committed; a rerun keeps the original record.
  clock.saved(total_steps, train_seconds, total_steps=total_steps, finished=True)
  export = os.path.join(workdir, checkpointing.BACKBONE)
  if start_step < total_steps or not checkpointing.is_backbone_dir(export):
    logging.info("Exporting the backbone to %s.", export)
    export_backbone(state, config, export)
  writer.close()
  if config.eval.final:
    result.evaluation, stopped = finish.final_evaluation(
      config, workdir, backbone_of(state), should_stop=lambda: preemption.received
    )
    result.preempted = stopped
  return result


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
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
