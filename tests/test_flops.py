"""`barlow_jax.benchmarks.flops`: the analytic FLOP count of the step against XLA:CPU's count of
the same jitted step, the backward rule against autodiff, the convolution count against brute
force, and MFU taken from the analytic count."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from barlow_jax import parallel, train_state, train_step
from barlow_jax.benchmarks import flops, step, step_jax
from barlow_jax.config import base_config


def _tiny_config(backbone="ResNet18", width=0.125, stem="imagenet", size=32, batch=8, **kw):
  config = base_config()
  config.model.backbone = backbone
  config.model.width = width
  config.model.stem = stem
  config.model.projector = "32-32-32"
  config.model.dtype = kw.get("dtype", "bfloat16")
  config.optim.name = kw.get("optimizer", "lars")
  config.dataset.image_size = size
  config.batch_size = batch
  return config


def _xla_flops_per_example(config, num_classes: int) -> float:
  """XLA:CPU's cost analysis of the jitted step as the trainer builds it, per example."""
  mesh = parallel.create_mesh()
  init = lambda key: train_state.create_train_state(
    config, key, mesh=mesh, steps_per_epoch=4, num_classes=num_classes
  )
  shapes = jax.eval_shape(init, jax.random.key(0))
  shardings = parallel.state_shardings(shapes, mesh, fsdp_min_size=0)
  state = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
  )
  size, batch = config.dataset.image_size, config.batch_size
  batch_sharding = parallel.batch_sharding(mesh)
  view = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8, sharding=batch_sharding)
  inputs = {"view_a": view, "view_b": view}
  if num_classes:
    inputs["label"] = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sharding)
  lowered = train_step.jit_train_step(config, mesh, state).lower(state, inputs)
  return step_jax.xla_flops(lowered) / batch


@pytest.mark.parametrize(
  "kwargs, num_classes",
  [
    ({}, 10),  # ResNet-18, ImageNet stem, bf16, LARS, the online probe: the suite's tiny step.
    pytest.param(
      {"backbone": "ResNet50", "stem": "cifar", "size": 16, "dtype": "float32"},
      0,
      marks=pytest.mark.slow,
    ),
  ],
)
def test_analytic_count_agrees_with_xla_cpu_within_two_percent(kwargs, num_classes):
  config = _tiny_config(**kwargs)
  count = flops.step_flops(config, num_classes=num_classes)
  xla = _xla_flops_per_example(config, num_classes)
  assert count["flops_per_example"] == pytest.approx(xla, rel=0.02)
  assert sum(count["per_example"].values()) == pytest.approx(count["flops_per_example"])
  assert count["per_example"]["backbone_convolutions"] > 0.5 * count["flops_per_example"]
  assert (count["per_example"]["probe"] > 0) == (num_classes > 0)


def test_backward_rule_equals_what_autodiff_emits():
  for config in (_tiny_config(), _tiny_config(backbone="ResNet50", stem="cifar", size=16)):
    check = flops.autodiff_matches_rule(config)
    assert check["rule"] == check["autodiff"] > 0


def _brute_force_taps(in_size, kernel, stride, pad):
  out_size = (in_size + 2 * pad - kernel) // stride + 1
  pairs = itertools.product(range(out_size), range(kernel))
  return sum(0 <= o * stride - pad + k < in_size for o, k in pairs)


@pytest.mark.parametrize(
  "in_size, kernel, stride, pad", [(7, 3, 1, 1), (224, 7, 2, 3), (5, 1, 2, 0)]
)
def test_convolution_count_skips_padding_taps(in_size, kernel, stride, pad):
  x = jax.ShapeDtypeStruct((2, in_size, in_size, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((kernel, kernel, 3, 4), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  counted = flops.count_jaxpr(jax.make_jaxpr(conv)(x, w).jaxpr)["conv"]
  taps = _brute_force_taps(in_size, kernel, stride, pad)
  assert counted == 2 * 2 * 4 * 3 * taps**2
  # The input and weight gradients (convolutions with dilations) redo every multiply-add.
  grad = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(conv(x, w)), argnums=(0, 1)))(x, w)
  assert flops.count_jaxpr(grad.jaxpr)["conv"] == 2 * counted


def test_folded_constants_and_dead_values_cost_nothing():
  x = jax.ShapeDtypeStruct((1000,), jnp.float32)
  # optax.global_norm's square(imag(x)) of a real leaf and the unused product fold away.
  fn = lambda x: (jnp.sum(x * x + jnp.square(jnp.zeros_like(x))), x * 3.0)[0]
  counted = sum(flops.count_jaxpr(jax.make_jaxpr(fn)(x).jaxpr).values())
  assert counted == 1000 + 999  # x * x, then the sum.
  xla = jax.jit(fn).lower(np.ones(1000, np.float32)).cost_analysis()["flops"]
  assert counted == xla


def test_mfu_comes_from_the_analytic_count():
  # XLA:GPU's cost analysis misses the cuDNN convolutions (0.82 GFLOP for a 50 GFLOP step).
  mode = {"device_images_per_second": 4000.0, "flops_per_image": 0.82e9}
  mode["flops_per_image_analytic"] = 50e9
  result = {"modes": {"host_augment": mode}, "peak_flops": 1000e12, "platform": "gpu"}
  result |= {"notes": [], "flops_per_image_analytic": 50e9}
  step._compare(result, {"device": "cuda", "variants": [{"images_per_second": 2000.0}]})
  assert mode["mfu"] == pytest.approx(0.2)
  assert result["peer"]["variants"][0]["mfu"] == pytest.approx(0.1)
