"""The network against docs/reference.md §2: parameter counts, torchvision's initialisation,
BatchNorm numerics in train mode (float64 NumPy), per-view statistics, and 8-device data
parallelism.

Big models are only shape-evaluated (jax.eval_shape); everything that runs uses a ResNet-18 at
width 0.125 with the CIFAR stem on 16 px images.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import config as config_lib
from barlow_jax import models


def _key(seed):
  # rbg keys: initialising under jit compiles in ~1/4 of threefry's time on the CPU.
  return jax.random.key(seed, impl="rbg")


def _count(variables):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables))


def _shapes(module, *shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def _tiny_model_config(**overrides):
  model_config = config_lib.base_config().model
  model_config.backbone = "ResNet18"
  model_config.stem = "cifar"
  model_config.width = 0.125
  model_config.projector = "32-16"
  model_config.dtype = "float32"
  model_config.zero_init_residual = False  # So residual branches matter in the comparisons.
  model_config.update(overrides)
  return model_config


def test_resnet50_parameter_count_is_the_reference():
  shapes = _shapes(models.ResNet50(), 1, 224, 224, 3)
  assert _count(shapes["params"]) == 23_508_032
  assert models.ResNet50().num_features == 2048


def test_resnet18_parameter_count_is_torchvision_without_fc():
  shapes = _shapes(models.ResNet18(), 1, 224, 224, 3)
  assert _count(shapes["params"]) == 11_176_512
  assert models.ResNet18().num_features == 512


def test_projector_parameter_count_is_the_reference():
  projector = models.Projector(models.parse_projector_sizes("8192-8192-8192"))
  params = _shapes(projector, 2, 2048)["params"]
  weights = sum(int(np.prod(params[f"linear{i}"]["kernel"].shape)) for i in range(3))
  assert weights == 150_994_944
  bn = _count({k: v for k, v in params.items() if k.startswith("bn")})
  assert bn == 32_768
  assert _count(params) == 150_994_944 + 32_768
  assert all(leaf.ndim == 2 for k, v in params.items() if "linear" in k for leaf in [v["kernel"]])


def test_widths_stems_and_features():
  model_config = config_lib.base_config().model
  assert models.backbone_features(model_config) == 2048
  assert models.backbone_features(_tiny_model_config()) == 64
  assert models.backbone_features(_tiny_model_config(backbone="ResNet50", width=0.25)) == 512
  # Quarter width: stages of 16-32-64-128 planes, and the imagenet stem quarters the side twice.
  shapes = _shapes(models.ResNet18(width=0.25), 1, 32, 32, 3)["params"]
  assert shapes["conv1"]["kernel"].shape == (7, 7, 3, 16)
  assert shapes["layer4_1"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert shapes["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 16, 32)
  assert "downsample_conv" not in shapes["layer1_0"]
  cifar = _shapes(models.ResNet18(width=0.25, stem="cifar"), 1, 32, 32, 3)["params"]
  assert cifar["conv1"]["kernel"].shape == (3, 3, 3, 16)


def test_parse_projector_sizes():
  assert models.parse_projector_sizes("8192-8192-8192") == (8192, 8192, 8192)
  assert models.parse_projector_sizes("128") == (128,)
  assert models.parse_projector_sizes([64, 32]) == (64, 32)
  for bad in ("", "8192-", "8192-x", "0-10", "-5"):
    with pytest.raises(ValueError, match="config.model.projector"):
      models.parse_projector_sizes(bad)


def test_bad_model_config_is_refused_with_the_key_name():
  with pytest.raises(ValueError, match="config.model.backbone"):
    models.create_model(_tiny_model_config(backbone="ResNet51"))
  with pytest.raises(ValueError, match="config.model.stem"):
    models.create_model(_tiny_model_config(stem="tiny"))
  with pytest.raises(ValueError, match="config.model.width"):
    models.create_model(_tiny_model_config(width=0.0))
  with pytest.raises(ValueError, match="config.model.dtype"):
    models.create_model(_tiny_model_config(dtype="float17"))
  with pytest.raises(ValueError, match="config.model.input_epsilon"):
    models.create_model(_tiny_model_config(standardize_input=True, input_epsilon=-0.1))


def test_initialisation_is_torchvision():
  x = jnp.zeros((1, 16, 16, 3))
  init = lambda module: jax.jit(lambda x: module.init(_key(1), x, train=False))(x)["params"]
  params = init(models.ResNet18(width=0.125, stem="cifar"))
  # zero_init_residual: the last BN of each block starts at 0, every other BN scale at 1.
  for i in range(1, 5):
    for j in range(2):
      block = params[f"layer{i}_{j}"]
      np.testing.assert_array_equal(block["bn2"]["scale"], 0.0)
      np.testing.assert_array_equal(block["bn1"]["scale"], 1.0)
      np.testing.assert_array_equal(block["bn1"]["bias"], 0.0)
  np.testing.assert_array_equal(params["layer2_0"]["downsample_bn"]["scale"], 1.0)
  # Kaiming normal, fan_out, untruncated: std sqrt(2 / (9 * 64)) and tails past 3.5 std.
  kernel = np.asarray(params["layer4_1"]["conv1"]["kernel"])
  std = np.sqrt(2.0 / (3 * 3 * kernel.shape[-1]))
  assert abs(kernel.std() / std - 1) < 0.03
  assert abs(kernel.mean()) < 0.05 * std
  assert np.abs(kernel).max() > 3.5 * std
  off = models.ResNet18(width=0.125, stem="cifar", zero_init_residual=False)
  params_off = init(off)
  np.testing.assert_array_equal(params_off["layer1_0"]["bn2"]["scale"], 1.0)


def test_every_resnet50_block_starts_with_its_last_bn_scale_at_zero():
  # Bottleneck blocks: bn3 is the last BN of the residual branch (BasicBlock's is bn2).
  model = models.ResNet50(width=0.0625, stem="cifar")
  assert model.zero_init_residual  # The default, as in the reference.
  x = jnp.zeros((1, 8, 8, 3))
  params = jax.jit(lambda x: model.init(_key(2), x, train=False))(x)["params"]
  blocks = [name for name in params if name.startswith("layer")]
  assert len(blocks) == 3 + 4 + 6 + 3
  for name in blocks:
    np.testing.assert_array_equal(params[name]["bn3"]["scale"], 0.0, err_msg=name)
    for other in ("bn1", "bn2", "downsample_bn"):
      if other in params[name]:
        np.testing.assert_array_equal(params[name][other]["scale"], 1.0, err_msg=name)


def _np_bn(x, scale, bias, eps):
  mean = x.mean(axis=0)
  var = x.var(axis=0)  # Biased, as torch normalises with.
  return (x - mean) / np.sqrt(var + eps) * scale + bias, mean, var


def test_projector_train_mode_matches_numpy_float64():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 12)).astype(np.float32)
  projector = models.Projector(sizes=(16, 8), bn_momentum=0.9, bn_epsilon=1e-5)
  variables = projector.init(jax.random.key(0), jnp.asarray(x), train=False)
  # torch Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  kernel0 = np.asarray(variables["params"]["linear0"]["kernel"])
  assert kernel0.shape == (12, 16) and np.abs(kernel0).max() <= 1 / np.sqrt(12)
  assert np.abs(kernel0).max() > 0.8 / np.sqrt(12)
  # Non-trivial BN parameters and running statistics.
  bn = {
    "scale": rng.uniform(0.5, 1.5, 16).astype(np.float32),
    "bias": rng.normal(size=16).astype(np.float32),
  }
  stats = {"mean": rng.normal(size=16).astype(np.float32), "var": rng.uniform(0.5, 2, 16)}
  stats["var"] = stats["var"].astype(np.float32)
  params = dict(variables["params"], bn0=bn)
  out, updated = projector.apply(
    {"params": params, "batch_stats": {"bn0": stats}},
    jnp.asarray(x),
    train=True,
    mutable=["batch_stats"],
  )
  w0 = kernel0.astype(np.float64)
  w1 = np.asarray(params["linear1"]["kernel"], np.float64)
  h = x.astype(np.float64) @ w0
  hn, mean, var = _np_bn(h, bn["scale"], bn["bias"], 1e-5)
  expected = np.maximum(hn, 0) @ w1
  assert out.dtype == jnp.float32 and out.shape == (32, 8)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  new = updated["batch_stats"]["bn0"]
  np.testing.assert_allclose(new["mean"], 0.9 * stats["mean"] + 0.1 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 * stats["var"] + 0.1 * var, rtol=1e-5, atol=1e-6)
  # Eval mode normalises with the running statistics.
  out_eval = projector.apply({"params": params, "batch_stats": {"bn0": stats}}, x, train=False)
  hn_eval = (h - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * bn["scale"] + bn["bias"]
  expected_eval = np.maximum(hn_eval, 0) @ w1
  np.testing.assert_allclose(out_eval, expected_eval, rtol=1e-5, atol=1e-5)
  # The ablation without BN: no statistics at all.
  no_bn = models.Projector(sizes=(16, 8), use_batch_norm=False)
  no_bn_vars = no_bn.init(jax.random.key(0), x, train=False)
  assert "batch_stats" not in no_bn_vars and set(no_bn_vars["params"]) == {"linear0", "linear1"}


def test_batch_norm_variance_survives_a_large_mean_to_std_ratio():
  # The projector's first BN on inputs with |mean| / std = 1e3 (identity first layer): a one-pass
  # variance E[h^2] - E[h]^2 loses ~40% of it in float32; two passes keep ~3e-5.
  rng = np.random.default_rng(0)
  h = (1e3 + rng.normal(size=(64, 16))).astype(np.float32)
  projector = models.Projector(sizes=(16, 8))
  variables = projector.init(jax.random.key(0), jnp.asarray(h), train=False)
  params = dict(variables["params"], linear0={"kernel": jnp.eye(16)})
  forward = jax.jit(lambda v, h: projector.apply(v, h, train=True, mutable=["batch_stats"]))
  out, updated = forward({"params": params, "batch_stats": variables["batch_stats"]}, h)
  hn, _, var = _np_bn(h.astype(np.float64), 1.0, 0.0, 1e-5)
  expected = np.maximum(hn, 0) @ np.asarray(params["linear1"]["kernel"], np.float64)
  assert np.abs(out - expected).max() / np.abs(expected).max() < 1e-4
  running_var = np.asarray(updated["batch_stats"]["bn0"]["var"], np.float64)
  np.testing.assert_allclose(running_var, 0.9 + 0.1 * var, rtol=1e-4)


def test_every_batch_norm_of_the_network_uses_the_two_pass_variance(tiny):
  model, variables, view_a, view_b = tiny
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      seen.append((context.module.path, context.module.use_fast_variance))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(_train_forward(model), variables, view_a, view_b)
  assert len(seen) == 2 * (1 + 8 * 2 + 3 + 1)  # Per view: stem, 8 blocks, 3 downsamples, projector.
  assert all(not fast for _, fast in seen), [path for path, fast in seen if fast]


@pytest.fixture(scope="module")
def tiny():
  """A tiny BarlowTwins, its variables (perturbed BN statistics) and two views of 16 images."""
  model = models.create_model(_tiny_model_config())
  rng = np.random.default_rng(0)
  view_a = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
  view_b = (rng.normal(size=(16, 16, 16, 3)) * 1.5 + 0.3).astype(np.float32)
  variables = jax.jit(lambda a, b: model.init(_key(0), a, b, train=False))(view_a[:1], view_b[:1])
  leaves, treedef = jax.tree.flatten(variables["batch_stats"])
  keys = jax.random.split(jax.random.key(1), len(leaves))
  stats = [x + 0.1 * jax.random.uniform(k, x.shape) for x, k in zip(leaves, keys)]
  variables = {"params": variables["params"], "batch_stats": jax.tree.unflatten(treedef, stats)}
  return model, variables, view_a, view_b


def _train_forward(model):
  return lambda v, a, b: model.apply(v, a, b, train=True, mutable=["batch_stats"])


def test_views_are_normalised_with_their_own_statistics(tiny):
  model, variables, view_a, view_b = tiny
  (rep_a, rep_b, emb_a, emb_b), updated = jax.jit(_train_forward(model))(variables, view_a, view_b)
  assert rep_a.shape == (16, 64) and emb_a.shape == (16, 16)
  assert rep_a.dtype == emb_a.dtype == jnp.float32

  def represent(v, x):
    return model.apply(v, x, train=True, method=models.BarlowTwins.represent, mutable=True)

  represent = jax.jit(represent)
  alone_a, after_a = represent(variables, view_a)
  alone_b, after_b = represent(
    {"params": variables["params"], "batch_stats": after_a["batch_stats"]}, view_b
  )
  np.testing.assert_allclose(rep_a, alone_a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rep_b, alone_b, rtol=1e-5, atol=1e-6)
  # Running averages: view A's statistics first, then view B's, as the reference's two calls.
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
    updated["batch_stats"]["backbone"],
    after_b["batch_stats"]["backbone"],
  )
  # A single pass over both views would mix their statistics: a different function.
  mixed, _ = represent(variables, np.concatenate([view_a, view_b]))
  assert np.abs(np.asarray(mixed[:16]) - np.asarray(rep_a)).max() > 1e-3


def test_bfloat16_compute_keeps_float32_parameters(tiny):
  _, variables, view_a, _ = tiny
  model16 = models.create_model(_tiny_model_config(dtype="bfloat16"))
  shapes = jax.eval_shape(
    lambda a: model16.init(jax.random.key(0), a, a, train=False),
    jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32),
  )
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
  rep16 = jax.jit(lambda v, x: model16.apply(v, x, method=models.BarlowTwins.represent))(
    variables, view_a
  )
  rep32 = tiny[0].apply(variables, view_a, method=models.BarlowTwins.represent)
  assert rep16.dtype == jnp.float32
  rel = np.linalg.norm(np.asarray(rep16) - np.asarray(rep32)) / np.linalg.norm(rep32)
  assert 0 < rel < 0.05


def test_sharded_and_shard_map_forward_equal_single_device(tiny, devices):
  model, variables, view_a, view_b = tiny
  single = jax.jit(_train_forward(model))(
    jax.device_put(variables, devices[0]),
    jax.device_put(view_a, devices[0]),
    jax.device_put(view_b, devices[0]),
  )

  mesh = Mesh(np.asarray(devices), ("data",))
  batch = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  args = (
    jax.device_put(variables, replicated),
    jax.device_put(view_a, batch),
    jax.device_put(view_b, batch),
  )
  # Plain sharded jit: BatchNorm's means over the batch axis become global all-reduces.
  sharded = jax.jit(_train_forward(model))(*args)
  assert len(sharded[0][0].sharding.device_set) == len(devices)

  # shard_map: each device sees 2 images; axis_name makes BatchNorm average over the mesh.
  model_sm = models.create_model(_tiny_model_config(), axis_name="data")
  mapped = jax.jit(
    jax.shard_map(
      _train_forward(model_sm),
      mesh=mesh,
      in_specs=(P(), P("data"), P("data")),
      out_specs=((P("data"),) * 4, P()),
    )
  )(*args)

  def check(x, y):
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * np.abs(y).max())

  for other in (sharded, mapped):
    jax.tree.map(check, other, single)
  # Without axis_name, shard_map normalises each device's 2 images alone: different numbers.
  per_device = jax.jit(
    jax.shard_map(
      _train_forward(model),
      mesh=mesh,
      in_specs=(P(), P("data"), P("data")),
      out_specs=((P("data"),) * 4, P("data")),
    )
  )(*args)
  assert np.abs(np.asarray(per_device[0][2]) - np.asarray(single[0][2])).max() > 1e-2


def test_asymmetry_options_predictor_and_stop_gradient():
  """The paper's asymmetry ablations: a predictor on branch A, no gradient through branch B."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
  shapes = jax.eval_shape(
    lambda: models.create_model(_tiny_model_config(predictor="auto")).init(
      _key(0), x, x, train=False
    )
  )
  predictor = shapes["params"]["predictor"]
  assert [predictor[f"linear{i}"]["kernel"].shape for i in range(2)] == [(16, 16), (16, 16)]
  with pytest.raises(ValueError, match="config.model.predictor"):
    models.create_model(_tiny_model_config(predictor="16-8"))

  def branch_gradient_norms(model):
    variables = model.init(_key(0), x, x, train=False)

    def branch_sums(params):
      (_, _, emb_a, emb_b), _ = model.apply(
        {**variables, "params": params}, x, x[::-1], train=True, mutable=["batch_stats"]
      )
      return jnp.sum(emb_a**2), jnp.sum(emb_b**2)

    grads = jax.jacrev(branch_sums)(variables["params"])
    return [float(optax_global_norm(g)) for g in grads]

  grad_a, grad_b = branch_gradient_norms(models.create_model(_tiny_model_config()))
  assert grad_a > 0 and grad_b > 0
  grad_a, grad_b = branch_gradient_norms(
    models.create_model(_tiny_model_config(stop_gradient_b=True))
  )
  assert grad_a > 0 and grad_b == 0


def optax_global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def test_standardize_images_matches_numpy_float64():
  rng = np.random.RandomState(3)
  x = rng.normal(size=(4, 5, 6, 3)) * rng.uniform(0.1, 3.0, size=(4, 1, 1, 1)) + rng.normal(
    size=(4, 1, 1, 3)
  )
  centred = x - x.mean(axis=(1, 2), keepdims=True)
  rms = np.sqrt((centred**2).mean(axis=(1, 2, 3), keepdims=True))
  expected = centred / (rms + 0.2)
  got = models.standardize_images(jnp.asarray(x, jnp.float32), 0.2)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
  # A flat colour and a global contrast change are invisible to the network behind it.
  shifted = 2.5 * x + rng.normal(size=(4, 1, 1, 3))
  no_eps = models.standardize_images(jnp.asarray(shifted, jnp.float32), 0.0)
  np.testing.assert_allclose(np.asarray(no_eps), centred / rms, rtol=1e-4, atol=1e-5)


def test_standardize_input_is_read_from_the_config():
  on = models.create_model(_tiny_model_config(standardize_input=True, input_epsilon=0.1))
  assert on.backbone.standardize_input and on.backbone.input_epsilon == 0.1
  assert not models.create_model(_tiny_model_config()).backbone.standardize_input
  # Without epsilon the network cannot tell an image from a recoloured, re-contrasted copy.
  exact = models.create_model(_tiny_model_config(standardize_input=True, input_epsilon=0.0))
  x = jnp.asarray(np.random.RandomState(0).uniform(size=(2, 8, 8, 3)), jnp.float32)
  variables = exact.backbone.init(_key(0), x, train=False)
  flat = exact.backbone.apply(variables, x, train=False)
  recoloured = exact.backbone.apply(variables, 3.0 * x + jnp.array([0.5, -1.0, 2.0]), train=False)
  np.testing.assert_allclose(np.asarray(recoloured), np.asarray(flat), rtol=1e-4, atol=1e-5)
