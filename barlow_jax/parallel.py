"""Where the train state lives on the devices: the mesh, and the FSDP rule for wide leaves.

Also the one way host batches reach a mesh and results come back (`shard_batch`,
`put_replicated`, `to_host`): evaluation, fine-tuning and the end of a run.

One `jax.jit` over a 1-D `Mesh` named `"data"` runs every step: the batch is split over the axis,
and by default every leaf of the state is replicated. With `config.parallel.fsdp_min_size = N > 0`
every parameter leaf with at least N elements, and the optimizer's copies of it (LARS momentum,
Adam moments), is split over the same axis along its largest dimension divisible by the device
count (fully sharded data parallel, FSDP): each device holds 1/devices of it. `jit` inserts the
all-gather before a sharded kernel is used and reduce-scatters its gradient; the update runs on
the shards. Nothing else changes: under `jit` every reduction is over the global array, so the
LARS trust ratio `eta * |p| / |g|` and the logged `grad_norm` / `param_norm` use the norms of
whole leaves, not of the local shards, and the numbers equal the replicated run's.

The wide leaves are the projector's kernels (three [D, D]-ish matrices: 2.2 billion parameters at
D = 32768); a threshold of 2**20 elements shards those and ResNet-50's largest convolutions
([3, 3, 512, 512] = 2.4M) and leaves every bias, BatchNorm vector and small kernel replicated.

Checkpoints hold whole arrays (orbax writes each shard into one array), so a sharded state can
be restored onto another device count or unsharded: pass the target's shardings
(`state_shardings` on the new mesh) to the restore.
"""

import collections
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import config_validation

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `"data"` over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def auto_mesh(mesh: Mesh) -> Mesh:
  """`mesh` with every axis of Auto type (the same devices and names); `mesh` if already so.

  `jax.make_mesh` gives Explicit axes by default (jax 0.10), where every contraction over a
  sharded axis must name its result's sharding. The project's jitted functions fix the shardings
  of their inputs and outputs (this module's rules) and leave the inside to XLA's propagation, so
  they lay their arrays out on the Auto form of whatever mesh they are given: the same devices and
  layout, the same numbers on Explicit and Auto meshes.
  """
  types = getattr(mesh, "axis_types", None)
  if not types or all(t == AxisType.Auto for t in types):
    return mesh
  return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _named(mesh: Mesh, spec: P) -> NamedSharding:
  return NamedSharding(auto_mesh(mesh), spec)


def to_auto(tree: Any) -> Any:
  """`tree` with each array on an Explicit-typed mesh relabelled onto its `auto_mesh` (no copy).

  A jitted function traces with its arguments' sharding types, so an array a user placed on an
  Explicit mesh would make the project's Auto-mode programs fail to trace.
  """

  def relabel(x):
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, NamedSharding):
      return x
    mesh = auto_mesh(sharding.mesh)
    if mesh is sharding.mesh:
      return x
    return jax.device_put(x, NamedSharding(mesh, sharding.spec))

  return jax.tree.map(relabel, tree)


def fsdp_min_size(config: ml_collections.ConfigDict) -> int:
  """`config.parallel.fsdp_min_size`, checked: an integer >= 0 (0 = everything replicated).

  Raises:
    ValueError: a negative or non-integer value (`config_validation`'s message).
  """
  value = config.parallel.fsdp_min_size
  if not config_validation.NUMERIC_KEYS["parallel.fsdp_min_size"].accepts(value):
    raise ValueError(config_validation.error_message("parallel.fsdp_min_size", value))
  return int(value)


def fsdp_partition_spec(shape: Sequence[int], num_devices: int, min_size: int) -> P:
  """The FSDP rule for one leaf of `shape` on `num_devices` devices.

  Returns `P()` (replicated) when `min_size` is 0, the leaf has fewer than `min_size` elements,
  there is one device, or no dimension is divisible by `num_devices`. Otherwise the spec that
  splits the largest divisible dimension over `"data"` (the last of equal largest ones, as
  big_vision's `fsdp` sharding rule does), e.g. `P(None, "data")` for an [8192, 8192] kernel.
  """
  shape = tuple(int(d) for d in shape)
  if min_size <= 0 or num_devices <= 1 or math.prod(shape) < min_size:
    return P()
  order = sorted(range(len(shape)), key=lambda i: (shape[i], i), reverse=True)
  for axis in order:
    if shape[axis] % num_devices == 0:
      spec: list[str | None] = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return P(*spec)
  return P()


def param_shardings(params, mesh: Mesh, *, fsdp_min_size: int = 0):
  """`NamedSharding`s of a parameter tree (arrays or `jax.ShapeDtypeStruct`s) by the FSDP rule."""
  size = mesh.shape[DATA_AXIS]
  return jax.tree.map(
    lambda x: _named(mesh, fsdp_partition_spec(np.shape(x), size, fsdp_min_size)), params
  )


def optimizer_shardings(tx, opt_state, params_shardings, mesh: Mesh):
  """Shardings of `tx`'s state: each copy of the parameter tree sharded like the parameters.

  Counters and other non-parameter leaves are replicated. Uses `optax.tree_map_params`, so it
  follows the structure `tx.init` builds (chains, masks, `multi_transform`).
  """
  replicated = _named(mesh, P())
  return optax.tree_utils.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    opt_state,
    params_shardings,
    transform_non_params=lambda _: replicated,
  )


def state_shardings(state, mesh: Mesh, *, fsdp_min_size: int = 0):
  """Shardings of a `train_state.TrainState` (or of its abstract shapes) on `mesh`.

  `params` and `probe_params` follow `fsdp_partition_spec`, `opt_state` and `probe_opt_state`
  follow their parameters, `step` and `batch_stats` are replicated. With `fsdp_min_size=0`
  everything is replicated.

  Returns:
    A `TrainState` of the same structure whose leaves are `NamedSharding`s.
  """
  replicated = _named(mesh, P())
  params = param_shardings(state.params, mesh, fsdp_min_size=fsdp_min_size)
  probe_params = param_shardings(state.probe_params, mesh, fsdp_min_size=fsdp_min_size)
  if state.probe_tx is not None:
    probe_opt = optimizer_shardings(state.probe_tx, state.probe_opt_state, probe_params, mesh)
  else:
    probe_opt = jax.tree.map(lambda _: replicated, state.probe_opt_state)
  return state.replace(
    step=replicated,
    params=params,
    batch_stats=jax.tree.map(lambda _: replicated, state.batch_stats),
    opt_state=optimizer_shardings(state.tx, state.opt_state, params, mesh),
    probe_params=probe_params,
    probe_opt_state=probe_opt,
  )


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
  """`tree` with every sharded leaf gathered onto every device (replicated leaves unchanged).

  For what needs whole arrays: the backbone export, evaluation, and `jax.device_get` in a
  multi-process run (a sharded array is not addressable from one process). `mesh` defaults to
  the mesh of the first sharded leaf.
  """
  sharded = [x for x in jax.tree.leaves(tree) if not x.sharding.is_fully_replicated]
  if not sharded:
    return tree
  mesh = sharded[0].sharding.mesh if mesh is None else mesh
  replicated = _named(mesh, P())
  return jax.jit(lambda t: t, out_shardings=jax.tree.map(lambda _: replicated, tree))(tree)


def bytes_per_device(tree, shardings) -> int:
  """Bytes one device holds of `tree` (arrays or shapes) laid out by `shardings` (same tree)."""
  total = 0
  for x, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
    shard = sharding.shard_shape(tuple(np.shape(x)))
    total += math.prod(shard) * np.dtype(x.dtype).itemsize
  return total


# --------------------------------------------------------------------------------------------------
# Host batches onto a mesh and results back (evaluation, the final table, fine-tuning). Argument
# order everywhere in this module: the tree first, the mesh second.


def local_mesh() -> Mesh:
  """A 1-D mesh named `"data"` over this process's devices only."""
  # In-memory evaluation arrays are whole on every process: each process computes the same numbers
  # on its own devices (process 0 writes them) instead of treating its copy as a slice of a global
  # batch.
  return create_mesh(jax.local_devices())


def shard_batch(tree: Any, mesh: Mesh | None) -> Any:
  """Process-local NumPy batch (any tree) -> global arrays split on axis 0 over `"data"`.

  Each process passes its own [B_local, ...] slice; the global array is [B_local * processes, ...]
  (`jax.make_array_from_process_local_data`). B_local must divide by the local device count.
  `mesh=None` puts each leaf whole on the default device instead (for a last batch that does not
  divide the mesh).
  """
  if mesh is None:
    return jax.tree.map(jnp.asarray, tree)
  sharding = _named(mesh, P(DATA_AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


def put_replicated(tree: Any, mesh: Mesh | None) -> Any:
  """`tree` (host or device arrays) placed whole on every device of `mesh`; unchanged for None."""
  if mesh is None:
    return tree
  return jax.device_put(tree, _named(mesh, P()))


def to_host(x: Any) -> np.ndarray:
  """A host NumPy copy of an array of a (possibly multi-process) run.

  A replicated array is read from this process's own copy; a sharded one is gathered from every
  process, which is a collective: every process must make the same call.
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


# ---------------------------------------------------------------------------------------------
# Global batches: the input pipeline's process-local NumPy rows -> arrays sharded over "data".


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over the devices on their first axis: `_named(mesh, P("data"))`."""
  return _named(mesh, P(DATA_AXIS))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's rows (first axis = local batch; works single-process).

  Each process passes its own `B / processes` rows; the result's first axis is the global batch
  B, sharded with `batch_sharding(mesh)` (`jax.make_array_from_process_local_data`).
  """
  return shard_batch({key: np.asarray(value) for key, value in local_batch.items()}, mesh)


def device_prefetch(iterator: Iterator, mesh: Mesh, size: int) -> Iterator[dict[str, jax.Array]]:
  """Global batches from an iterator of process-local batches, `size` of them in flight.

  Keeping batches in flight overlaps their host-to-device copies with the running step
  (`size` < 1 counts as 1).
  """
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
