"""FSDP on 8 emulated devices: the sharding rule, LARS's global norms, sharded == replicated steps,
the compiled step's memory, and checkpoints that move between device counts and layouts.

A tiny network (ResNet-18 at width 0.125, 16 px, projector 256-256-256, global batch 16) whose
projector kernels (65k and 16k elements) are sharded at `fsdp_min_size = 4096`.
"""

import functools

import configs_tiny
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import checkpointing, optim, parallel, train_setup, train_state, train_step
from barlow_jax.benchmarks import memory

MIN_SIZE = 4096


def fsdp_config(min_size=MIN_SIZE, **optim_overrides):
  config = configs_tiny.get_config()
  config.model.projector = "256-256-256"
  config.optim.name = "lars"
  config.optim.lr_weights = 0.2
  config.optim.lr_biases = 0.0048
  config.optim.weight_decay = 1e-6
  config.parallel.fsdp_min_size = min_size
  for key, value in optim_overrides.items():
    config.optim[key] = value
  return config


def _flat_leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(tree))]


def _relative_error(actual, expected):
  a, b = _flat_leaves(actual), _flat_leaves(expected)
  assert len(a) == len(b)
  diff = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b, strict=True)))
  return diff / max(np.sqrt(sum(np.sum(y**2) for y in b)), 1e-30)


@pytest.mark.parametrize(
  "shape, devices, min_size, spec",
  [
    ((8192, 8192), 8, 1, P(None, "data")),  # Equal dimensions: the last, like big_vision.
    ((2048, 8192), 8, 1, P(None, "data")),
    ((8192, 2048), 8, 1, P("data", None)),
    ((3, 3, 512, 512), 8, 1, P(None, None, None, "data")),
    ((20, 16), 8, 1, P(None, "data")),  # 20 is the largest but not divisible by 8.
    ((12, 5), 8, 1, P()),  # No dimension divisible: replicated.
    ((8192,), 8, 1, P("data")),
    ((8192, 8192), 8, 8192 * 8192 + 1, P()),  # Below the threshold.
    ((8192, 8192), 8, 0, P()),  # FSDP off.
    ((8192, 8192), 1, 1, P()),  # One device.
    ((), 8, 1, P()),
  ],
)
def test_fsdp_partition_spec(shape, devices, min_size, spec):
  assert parallel.fsdp_partition_spec(shape, devices, min_size) == spec


def test_a_bad_fsdp_min_size_names_the_key():
  config = fsdp_config(min_size=-1)  # The locked schema already refuses floats and strings.
  with pytest.raises(ValueError, match="config.parallel.fsdp_min_size"):
    train_setup.validate_pretraining(config)


def test_trust_ratio_and_norm_metrics_use_global_norms_of_a_sharded_leaf(devices):
  """Each device holds one row; the rows' norms differ, so a per-shard norm would be wrong."""
  mesh = parallel.create_mesh(devices)
  rng = np.random.default_rng(0)
  scale = np.arange(1, 9, dtype=np.float64)[:, None]
  p = rng.normal(size=(8, 16)) * scale
  g = rng.normal(size=(8, 16)) / scale**2
  sharding = NamedSharding(mesh, P("data", None))
  put = lambda x: jax.device_put(jnp.asarray(x, jnp.float32), sharding)
  wd, eta = 1e-2, 0.001
  tx = optim.scale_by_lars(weight_decay=wd, eta=eta, momentum=0.9)

  @functools.partial(jax.jit, out_shardings=sharding)
  def update(g, p):
    return tx.update({"w": g}, tx.init({"w": p}), {"w": p})[0]["w"]

  out = update(put(g), put(p))
  assert out.sharding.spec == P("data", None)
  decayed = g + wd * p
  expected = eta * np.linalg.norm(p) / np.linalg.norm(decayed) * decayed  # momentum 0 at start
  per_shard = eta * np.linalg.norm(p, axis=1, keepdims=True)
  per_shard = per_shard / np.linalg.norm(decayed, axis=1, keepdims=True) * decayed
  # The test tells the two apart: the per-shard ratios are far from the global one.
  assert np.linalg.norm(per_shard - expected) > 0.5 * np.linalg.norm(expected)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-12)
  norm = jax.jit(train_step.global_norm)(put(p))
  np.testing.assert_allclose(float(norm), np.linalg.norm(p), rtol=1e-6)


def test_the_wide_leaves_and_their_momentum_are_sharded(devices):
  config = fsdp_config()
  mesh = parallel.create_mesh(devices)
  state = jax.eval_shape(
    functools.partial(train_state.create_train_state, config, mesh=mesh, steps_per_epoch=10),
    jax.random.key(0),
  )
  shardings = parallel.state_shardings(state, mesh, fsdp_min_size=MIN_SIZE)
  kernel = shardings.params["projector"]["linear1"]["kernel"]
  assert kernel.spec == P(None, "data")
  momentum = shardings.opt_state[1][0][2].trace["projector"]["linear1"]["kernel"]
  assert momentum.spec == P(None, "data")
  assert shardings.step.spec == P()
  assert all(s.spec == P() for s in jax.tree.leaves(shardings.batch_stats))
  for x, s in zip(jax.tree.leaves(state.params), jax.tree.leaves(shardings.params), strict=True):
    # Every leaf of this model has a last dimension divisible by 8: the size decides.
    assert (s.spec != P()) == (x.size >= MIN_SIZE), (x.shape, s.spec)
  # Replicated by default: the old layout.
  plain = parallel.state_shardings(state, mesh)
  assert all(s.spec == P() for s in jax.tree.leaves(plain))


def _run(config, mesh, num_steps=3, state=None):
  """(state after `num_steps` steps, their metrics, the initial state on the host).

  `state`: the initial state (a host copy is placed as `config` lays it out), or None for
  `create_train_state`'s.
  """
  if state is None:
    state = train_state.create_train_state(
      config, jax.random.key(0), mesh=mesh, steps_per_epoch=10, num_classes=10
    )
  else:
    min_size = parallel.fsdp_min_size(config)
    state = jax.device_put(state, parallel.state_shardings(state, mesh, fsdp_min_size=min_size))
  initial = jax.device_get(state)  # A copy: the step donates the state's buffers.
  step = train_step.jit_train_step(config, mesh, state)
  rng = np.random.default_rng(0)
  metrics = []
  for i in range(num_steps):
    batch = {
      "view_a": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
      "view_b": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
      "label": rng.integers(0, 10, size=16).astype(np.int32),
    }
    state, m = step(state, parallel.global_batch(batch, mesh), i == num_steps - 1)
    metrics.append(jax.device_get(m))
  return state, metrics, initial


@pytest.fixture(scope="module")
def sharded_and_replicated_runs(devices):
  mesh = parallel.create_mesh(devices)
  sharded = _run(fsdp_config(), mesh)
  # From the same initial values, laid out replicated (one initialisation compiled, not two).
  replicated = _run(fsdp_config(min_size=0), mesh, state=sharded[2])
  return sharded, replicated


def test_three_steps_sharded_equal_three_steps_replicated(sharded_and_replicated_runs):
  (sharded, metrics_s, _), (replicated, metrics_r, initial) = sharded_and_replicated_runs
  kernel = sharded.params["projector"]["linear1"]["kernel"]
  assert kernel.sharding.spec == P(None, "data")
  assert kernel.addressable_shards[0].data.shape == (256, 32)
  assert replicated.params["projector"]["linear1"]["kernel"].sharding.is_fully_replicated
  for name in ("params", "batch_stats", "probe_params"):
    error = _relative_error(getattr(sharded, name), getattr(replicated, name))
    assert error < 1e-6, (name, error)
  # The momenta are sums of raw gradients, whose float32 reductions run in another order when
  # the kernels are sharded: ~5e-6 apart, as far as 8 replicated devices are from 1 (measured:
  # 4.9e-6 and 4.7e-6 after these three steps).
  for name in ("opt_state", "probe_opt_state"):
    error = _relative_error(getattr(sharded, name), getattr(replicated, name))
    assert error < 2e-5, (name, error)
  assert _relative_error(replicated.params, initial.params) > 1e-4  # The steps moved them.
  for m_s, m_r in zip(metrics_s, metrics_r, strict=True):
    for key in ("loss", "grad_norm", "param_norm", "probe_loss", "representation_rank"):
      # The rank monitor's float32 eigendecomposition of the Gram matrix sums in another order
      # per sharding: ~1e-5 apart (tests/test_monitors.py holds it to the SVD at 1e-4).
      rtol = 1e-4 if key == "representation_rank" else 1e-6
      np.testing.assert_allclose(m_s[key], m_r[key], rtol=rtol, err_msg=key)


def test_compiled_step_holds_a_sixth_of_the_parameters_and_optimizer_state(devices):
  """XLA's memory analysis of the compiled step (compile only) for a projector-dominated model."""
  mesh = parallel.create_mesh(devices)
  config = fsdp_config()
  config.model.projector = "1024-1024-1024"
  config.batch_size = 8
  config.dataset.image_size = 8
  sharded = memory.step_memory(config, mesh, num_classes=0)
  config.parallel.fsdp_min_size = 0
  replicated = memory.step_memory(config, mesh, num_classes=0)
  state_bytes = lambda r: r["params_bytes"] + r["opt_state_bytes"]
  assert replicated["params_bytes"] == 4 * replicated["num_params"]
  # LARS: a momentum per parameter, and two int32 step counts of the learning-rate schedules.
  assert replicated["opt_state_bytes"] == replicated["params_bytes"] + 8
  assert state_bytes(sharded) <= state_bytes(replicated) / 6
  # XLA's own input sizes agree: what the device holds of the state shrank as much.
  assert sharded["argument_bytes"] <= replicated["argument_bytes"] / 6
  assert sharded["argument_bytes"] - state_bytes(sharded) == (
    replicated["argument_bytes"] - state_bytes(replicated)
  )
  assert sharded["total_bytes"] < replicated["total_bytes"]


def _save_and_restore(state, config, workdir, mesh, min_size):
  manager = checkpointing.checkpoint_manager(str(workdir), max_to_keep=int(config.keep_checkpoints))
  try:
    train_state.save_state(manager, state, 3)
    manager.wait_until_finished()
    target = jax.eval_shape(lambda s: s, state)
    return train_state.restore_state(manager, target, mesh, 3, fsdp_min_size=min_size)
  finally:
    manager.close()


@pytest.mark.parametrize(
  "num_devices, min_size",
  [(4, MIN_SIZE), (8, 0), (1, 0)],
  ids=["4_devices_sharded", "8_devices_replicated", "1_device"],
)
def test_a_sharded_checkpoint_restores_onto_other_layouts(
  sharded_and_replicated_runs, devices, tmp_path, num_devices, min_size
):
  (sharded, _, _), _ = sharded_and_replicated_runs
  mesh = parallel.create_mesh(devices[:num_devices])
  restored = _save_and_restore(sharded, fsdp_config(), tmp_path, mesh, min_size)
  assert _relative_error(restored, sharded) == 0.0
  kernel = restored.params["projector"]["linear1"]["kernel"]
  assert len(kernel.sharding.device_set) == num_devices
  assert kernel.sharding.is_fully_replicated == (min_size == 0 or num_devices == 1)
  assert int(restored.step) == 3


def test_the_backbone_export_of_a_sharded_state_is_whole(sharded_and_replicated_runs, tmp_path):
  (sharded, _, _), _ = sharded_and_replicated_runs
  assert not all(
    x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded.params["backbone"])
  )
  train_state.export_backbone(sharded, fsdp_config(), str(tmp_path / "backbone"))
  _, variables = train_state.load_exported_backbone(str(tmp_path / "backbone"))
  assert _relative_error(variables["params"], sharded.params["backbone"]) == 0.0
  assert all(_whole(x) for x in jax.tree.leaves(variables["params"]))


def test_evaluation_reads_the_backbone_of_a_sharded_checkpoint(
  sharded_and_replicated_runs, tmp_path
):
  from barlow_jax.evaluation import features as eval_features

  (sharded, _, _), _ = sharded_and_replicated_runs
  config = fsdp_config()
  checkpointing.write_config(config, str(tmp_path))
  manager = checkpointing.checkpoint_manager(
    str(tmp_path), max_to_keep=int(config.keep_checkpoints)
  )
  try:
    train_state.save_state(manager, sharded, 3)
    manager.wait_until_finished()
  finally:
    manager.close()
  _, variables, _ = eval_features.load_backbone(str(tmp_path), checkpoint_step=3)
  assert all(_whole(x) for x in jax.tree.leaves(variables))
  assert _relative_error(variables["params"], sharded.params["backbone"]) == 0.0


@pytest.mark.slow
def test_the_memory_benchmark_command_compiles_for_another_device_count(tmp_path):
  """`python -m barlow_jax.benchmark memory` in its own process with 2 emulated devices."""
  import json
  import subprocess
  import sys

  def figures(min_size):
    out = tmp_path / f"{min_size}.json"
    command = [
      sys.executable,
      *("-m", "barlow_jax.benchmark", "memory", "--backbone=ResNet18", "--image_size=32"),
      *("--projector=1024-1024-1024", "--batch=4", "--devices=2", "--num_classes=0"),
      f"--fsdp_min_size={min_size}",
      f"--out={out}",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return json.loads(out.read_text())

  replicated, sharded = figures(0), figures(2**20)
  assert replicated["devices"] == sharded["devices"] == 2
  assert replicated["platform"] == "cpu"
  state = lambda r: r["params_bytes"] + r["opt_state_bytes"]
  assert state(replicated) == 8 * replicated["num_params"] + 8  # + two int32 step counts.
  # ResNet-18's [3, 3, 512, 512] kernels and the two 1024 x 1024 ones are halved.
  assert state(sharded) < 0.75 * state(replicated)
  assert sharded["total_bytes"] < replicated["total_bytes"]
  # The step's FLOPs: the analytic count beside XLA's cost analysis of the same step.
  assert replicated["flops_per_image_analytic"] == pytest.approx(
    replicated["flops_per_image"], rel=0.02
  )


def _whole(x) -> bool:
  # The loaders give host NumPy arrays (whole by construction; barlow_jax.checkpointing).
  return isinstance(x, np.ndarray) or x.sharding.is_fully_replicated


def test_host_batches_onto_the_mesh_and_back():
  mesh = parallel.create_mesh()
  batch = {"image": np.arange(48, dtype=np.float32).reshape(16, 3), "label": np.arange(16)}
  sharded = parallel.shard_batch(batch, mesh)
  assert sharded["image"].sharding.spec == P("data")
  assert {s.data.shape for s in sharded["image"].addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(parallel.to_host(sharded["image"]), batch["image"])
  whole = parallel.shard_batch(batch, None)  # A last batch that does not divide the mesh.
  assert len(whole["label"].devices()) == 1
  replicated = parallel.put_replicated(batch, mesh)
  assert replicated["image"].sharding.is_fully_replicated
  assert len(replicated["image"].devices()) == 8
  assert parallel.put_replicated(batch, None) is batch
  assert parallel.local_mesh().devices.size == jax.local_device_count() == 8


def test_the_train_step_and_feature_step_on_an_explicit_mesh(sharded_and_replicated_runs, devices):
  """Issue 26, item 1: `jax.make_mesh` gives Explicit axes by default; the project's jitted
  functions (state init, the train step with FSDP, feature extraction) run on such a mesh and give
  the Auto mesh's numbers. Batches placed on the Explicit mesh by the caller are accepted too."""
  from barlow_jax.evaluation import features

  mesh = jax.make_mesh((8,), ("data",), devices=devices)
  assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
  config = fsdp_config()
  state = train_state.create_train_state(
    config, jax.random.key(0), mesh=mesh, steps_per_epoch=10, num_classes=10
  )
  step = train_step.jit_train_step(config, mesh, state)
  rng = np.random.default_rng(0)
  metrics = []
  for i in range(3):
    batch = {
      "view_a": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
      "view_b": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
      "label": rng.integers(0, 10, size=16).astype(np.int32),
    }
    on_mesh = jax.device_put(batch, NamedSharding(mesh, P("data")))  # Explicit-typed arrays.
    state, m = step(state, on_mesh, i == 2)
    metrics.append(jax.device_get(m))
  assert step.num_traces == 1
  (auto_state, auto_metrics, _), _ = sharded_and_replicated_runs
  assert state.params["projector"]["linear1"]["kernel"].sharding.spec == P(None, "data")
  for name in ("params", "batch_stats", "opt_state", "probe_params"):
    error = _relative_error(getattr(state, name), getattr(auto_state, name))
    assert error < 1e-6, (name, error)
  for m_e, m_a in zip(metrics, auto_metrics, strict=True):
    for key in ("loss", "grad_norm", "param_norm", "probe_loss", "representation_rank"):
      # The rank monitor's float32 eigendecomposition of the Gram matrix sums in another order
      # per sharding: ~1e-5 apart (tests/test_monitors.py holds it to the SVD at 1e-4).
      rtol = 1e-4 if key == "representation_rank" else 1e-6
      np.testing.assert_allclose(m_e[key], m_a[key], rtol=rtol, err_msg=key)

  backbone = state.model.backbone
  variables = train_state.backbone_of(state)
  images = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
  batches = lambda: features.array_batches(images, np.zeros(16, np.int32), 16)
  explicit, _ = features.extract_features(backbone, variables, batches(), mesh=mesh)
  auto, _ = features.extract_features(
    backbone, variables, batches(), mesh=parallel.create_mesh(devices)
  )
  np.testing.assert_allclose(explicit, auto, rtol=1e-6, atol=1e-6)
