"""The programs a run executes, lowered for a mesh from abstract shapes: nothing is allocated.

Each builder returns a `Program`: the lowered jitted function (the very function the trainer or
the evaluation runs, with its shardings and donation) and the exact per-device bytes of its
parameters and optimizer state (from the shapes and shardings). `analyse(program, chip)`
compiles it and reads XLA's memory, cost and HLO: `barlow_jax.benchmarks.compile` runs them for
a TPU slice (`tpu_slices.slice_devices`), and they work for any mesh (8 emulated CPUs in tests).
"""

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import optim, parallel, train_state, train_step
from barlow_jax.benchmarks import step_jax, tpu_slices
from barlow_jax.evaluation import features, linear_probe

# The schedules' lengths only set constants in the programs, not their shapes, memory or
# communication: one step per epoch stands in for the dataset's count (no data is read).
_STEPS_PER_EPOCH = 1


@dataclasses.dataclass
class Program:
  """A lowered program and the exact bytes one device holds of its parameters / optimizer state."""

  lowered: Any
  params_bytes: int
  opt_state_bytes: int
  lower_seconds: float


def _abstract(tree, shardings):
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def _replicated(tree, mesh: Mesh):
  return _abstract(tree, jax.tree.map(lambda _: NamedSharding(mesh, P()), tree))


def _batch_sharding(mesh: Mesh, batch: int):
  # As `features.extract_features` and `parallel.shard_batch` place a batch: split over the mesh
  # when it divides, else whole on one device.
  if batch % mesh.size == 0:
    return parallel.batch_sharding(mesh)
  return SingleDeviceSharding(mesh.devices.flat[0])


def train_program(config, mesh: Mesh, num_classes: int) -> Program:
  """`train_step.jit_train_step` as the trainer builds it (state donated, FSDP by
  `config.parallel.fsdp_min_size`, `config.augment.on_device`, the monitors), lowered for a
  global batch of `config.batch_size` uint8 views (and labels when `num_classes` > 0)."""
  t0 = time.perf_counter()
  tx, _ = optim.create_optimizer(config, _STEPS_PER_EPOCH)
  init = functools.partial(
    train_state.create_train_state, config, mesh=mesh, num_classes=num_classes, tx=tx
  )
  shapes = jax.eval_shape(init, jax.random.key(0))
  shardings = parallel.state_shardings(shapes, mesh, fsdp_min_size=parallel.fsdp_min_size(config))
  state = _abstract(shapes, shardings)
  batch_size, size = int(config.batch_size), int(config.dataset.image_size)
  sharding = parallel.batch_sharding(mesh)
  view = jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8, sharding=sharding)
  batch = {"view_a": view, "view_b": view}
  if num_classes:
    batch["label"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)
  lowered = train_step.jit_train_step(config, mesh, state).lower(state, batch)
  return Program(
    lowered,
    parallel.bytes_per_device(shapes.params, shardings.params),
    parallel.bytes_per_device(shapes.opt_state, shardings.opt_state),
    time.perf_counter() - t0,
  )


def _backbone(config, mesh: Mesh):
  backbone = features.create_backbone(config.model)
  size = int(config.dataset.image_size)
  shapes = jax.eval_shape(
    functools.partial(features.init_backbone, backbone, size, int(config.seed))
  )
  return backbone, shapes, _replicated(shapes, mesh)


def _param_bytes(tree) -> int:
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def features_program(config, mesh: Mesh, batch_size: int) -> Program:
  """The evaluation's feature extraction (`features._apply_features`: the backbone in eval mode,
  variables replicated) on `batch_size` float32 images of `config.dataset.image_size`."""
  t0 = time.perf_counter()
  backbone, shapes, variables = _backbone(config, mesh)
  size = int(config.dataset.image_size)
  images = jax.ShapeDtypeStruct(
    (batch_size, size, size, 3), jnp.float32, sharding=_batch_sharding(mesh, batch_size)
  )
  lowered = features._apply_features(backbone).lower(variables, images)
  return Program(lowered, _param_bytes(shapes["params"]), 0, time.perf_counter() - t0)


def linear_probe_program(config, mesh: Mesh, num_classes: int, batch_size: int) -> Program:
  """The reference linear protocol's head update (`linear_probe.reference_head_step`): frozen
  backbone, head and its SGD state replicated, `batch_size` float32 images and labels."""
  t0 = time.perf_counter()
  backbone, shapes, frozen = _backbone(config, mesh)
  size = int(config.dataset.image_size)
  tx = linear_probe.torch_sgd(
    linear_probe.cosine_to_zero(float(config.eval.probe_lr), _STEPS_PER_EPOCH),
    float(config.eval.probe_momentum),
    float(config.eval.probe_weight_decay),
  )
  dim = jax.eval_shape(
    lambda v, x: backbone.apply(v, x, train=False), shapes, jnp.zeros((1, size, size, 3))
  ).shape[-1]
  head_shapes = jax.eval_shape(
    lambda k: linear_probe.linear_head_init(k, dim, num_classes), jax.random.key(0)
  )
  opt_shapes = jax.eval_shape(tx.init, head_shapes)
  sharding = _batch_sharding(mesh, batch_size)
  batch = {
    "image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32, sharding=sharding),
    "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding),
  }
  step = linear_probe.reference_head_step(backbone, tx)
  lowered = step.lower(_replicated(head_shapes, mesh), _replicated(opt_shapes, mesh), frozen, batch)
  return Program(
    lowered,
    _param_bytes(shapes["params"]) + _param_bytes(head_shapes),
    _param_bytes(opt_shapes),
    time.perf_counter() - t0,
  )


def analyse(program: Program, hbm_bytes: int | None, peak_flops: float | None) -> dict:
  """Compiles `program`; its per-device figures (bytes, FLOPs, seconds) as a dict.

  Keys: `params_bytes`, `opt_state_bytes`, `other_args_bytes` (BatchNorm statistics, probe,
  batch shard, step), `temp_bytes` (activations and temporaries), `output_bytes`,
  `alias_bytes` (outputs written into donated arguments), `total_bytes` (arguments + outputs -
  aliased + temporaries), `fits` / `headroom_bytes` / `headroom_percent` against `hbm_bytes`,
  `flops` (XLA's cost analysis of one device's program), `ideal_step_seconds` (`flops` at
  `peak_flops`: a lower bound), `collectives` (`tpu_slices.collectives`), `host_callbacks`
  (`tpu_slices.host_transfers`, expected []), `lower_seconds`, `compile_seconds`.
  """
  t0 = time.perf_counter()
  compiled = program.lowered.compile()
  compile_seconds = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  arguments = int(memory.argument_size_in_bytes)
  outputs, aliased = int(memory.output_size_in_bytes), int(memory.alias_size_in_bytes)
  temp = int(memory.temp_size_in_bytes)
  total = arguments + outputs - aliased + temp
  text = compiled.as_text()
  flops = step_jax.xla_flops(compiled)
  out = {
    "params_bytes": program.params_bytes,
    "opt_state_bytes": program.opt_state_bytes,
    "other_args_bytes": arguments - program.params_bytes - program.opt_state_bytes,
    "temp_bytes": temp,
    "output_bytes": outputs,
    "alias_bytes": aliased,
    "total_bytes": total,
    "flops": flops,
    "collectives": tpu_slices.collectives(text),
    "host_callbacks": tpu_slices.host_transfers(text),
    "lower_seconds": round(program.lower_seconds, 2),
    "compile_seconds": round(compile_seconds, 2),
  }
  if hbm_bytes:
    out["fits"] = total <= hbm_bytes
    out["headroom_bytes"] = hbm_bytes - total
    out["headroom_percent"] = round(100.0 * (hbm_bytes - total) / hbm_bytes, 1)
  if peak_flops and flops == flops:
    out["ideal_step_seconds"] = flops / peak_flops
  return out
