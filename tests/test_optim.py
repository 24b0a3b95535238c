"""LARS and the schedule against a plain float64 NumPy restatement of docs/reference.md §3.

The NumPy side below is written from the released code's `LARS.step` and `adjust_learning_rate`,
not from barlow_jax.optim, so a change of order (lr before the momentum, as in `optax.lars`) or of
step indexing shows up here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from barlow_jax import config as config_lib
from barlow_jax import optim

STEPS_PER_EPOCH = 5
NUM_EPOCHS = 10  # 50 updates: 10 of warmup (2 epochs), 40 of cosine.
WARMUP_EPOCHS = 2


def small_config(**optim_overrides):
  config = config_lib.base_config()
  config.batch_size = 512  # lr = base * 2.
  config.num_epochs = NUM_EPOCHS
  config.optim.warmup_epochs = WARMUP_EPOCHS
  # Larger than the reference's so that decay and trust ratio visibly move the weights in 50 steps.
  config.optim.weight_decay = 1e-2
  config.optim.eta = 0.02
  config.optim.gradient_scale = 1 / 16
  for key, value in optim_overrides.items():
    config.optim[key] = value
  return config


def make_params(dtype):
  rng = np.random.default_rng(0)
  params = {
    "conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
    "bn": {"scale": 1 + 0.1 * rng.normal(size=(4,)), "bias": 0.1 * rng.normal(size=(4,))},
    "head": {"kernel": rng.normal(size=(4, 5)) / 2, "bias": np.zeros(5)},
    # |p| = 0: the trust ratio must be 1 (and the first update has lr 0, so it stays 0 twice).
    "zero": {"kernel": np.zeros((3, 2))},
  }
  return jax.tree.map(lambda x: x.astype(dtype), params)


def make_grads(params, num_steps):
  rng = np.random.default_rng(1)
  return [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(num_steps)]


# --------------------------------------------------------------------------------------------------
# The reference, restated plainly in float64.


def reference_lr(step, *, batch_size, epochs, steps_per_epoch, warmup_epochs, lr_w, lr_b):
  """The released code's adjust_learning_rate: step counts from 0 at the first update."""
  max_steps = epochs * steps_per_epoch
  warmup_steps = warmup_epochs * steps_per_epoch
  base_lr = batch_size / 256
  if step < warmup_steps:
    lr = base_lr * step / warmup_steps
  else:
    step -= warmup_steps
    max_steps -= warmup_steps
    q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
    end_lr = base_lr * 0.001
    lr = base_lr * q + end_lr * (1 - q)
  return lr * lr_w, lr * lr_b


def reference_lars(params, grads_per_step, config, steps_per_epoch):
  """The released code's LARS.step with weight_decay_filter and lars_adaptation_filter on."""
  o = config.optim
  leaves, treedef = jax.tree.flatten(params)
  p = [np.array(x, np.float64) for x in leaves]
  mu = [np.zeros_like(x) for x in p]
  for step, grads in enumerate(grads_per_step):
    lr_w, lr_b = reference_lr(
      step,
      batch_size=config.batch_size,
      epochs=config.num_epochs,
      steps_per_epoch=steps_per_epoch,
      warmup_epochs=o.warmup_epochs,
      lr_w=o.lr_weights,
      lr_b=o.lr_biases,
    )
    for i, g in enumerate(jax.tree.leaves(grads)):
      # The reference's gradient is 1/W of the true one; gradient_scale plays that role.
      dp = o.gradient_scale * np.asarray(g, np.float64)
      excluded = p[i].ndim == 1
      if not excluded:
        dp = dp + o.weight_decay * p[i]
        param_norm = np.linalg.norm(p[i])
        update_norm = np.linalg.norm(dp)
        q = o.eta * param_norm / update_norm if param_norm > 0 and update_norm > 0 else 1.0
        dp = dp * q
      mu[i] = o.momentum * mu[i] + dp
      p[i] = p[i] - (lr_b if excluded else lr_w) * mu[i]
  return jax.tree.unflatten(treedef, p)


def run_optax(tx, params, grads_per_step, dtype):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for grads in grads_per_step:
    grads = jax.tree.map(lambda g: jnp.asarray(g, dtype), grads)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def relative_errors(actual, expected):
  return jax.tree.map(
    lambda a, e: float(np.linalg.norm(np.asarray(a, np.float64) - e) / np.linalg.norm(e)),
    actual,
    expected,
  )


# --------------------------------------------------------------------------------------------------
# Tests.


def _reference_case():
  """(config, float64 params, per-step gradients, the reference LARS's float64 result)."""
  config = small_config()
  params64 = make_params(np.float64)
  grads = make_grads(params64, NUM_EPOCHS * STEPS_PER_EPOCH)
  return config, params64, grads, reference_lars(params64, grads, config, STEPS_PER_EPOCH)


def test_lars_matches_the_reference_step_for_step_in_float64():
  config, params64, grads, expected = _reference_case()

  with jax.enable_x64():
    tx, _ = optim.create_optimizer(config, STEPS_PER_EPOCH)
    params = jax.tree.map(jnp.asarray, params64)
    assert jax.tree.leaves(params)[0].dtype == jnp.float64
    actual = jax.tree.map(np.asarray, run_optax(tx, params, grads, jnp.float64))

  for leaf_actual, leaf_expected in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    # The bar is < 1e-6 relative; in float64 the two agree to rounding.
    np.testing.assert_allclose(leaf_actual, leaf_expected, rtol=1e-9, atol=1e-12)

  # Not vacuous: every leaf moved well beyond the tolerance, through warmup and cosine.
  moved = relative_errors(expected, jax.tree.map(lambda x: x + 1e-30, params64))
  assert all(m > 1e-3 for m in jax.tree.leaves(moved)), moved


def test_lars_matches_the_reference_in_float32():
  config, _, grads, expected = _reference_case()
  tx, _ = optim.create_optimizer(config, STEPS_PER_EPOCH)
  params32 = make_params(np.float32)
  actual = run_optax(tx, jax.tree.map(jnp.asarray, params32), grads, jnp.float32)
  errors = relative_errors(actual, expected)
  assert all(e < 1e-5 for e in jax.tree.leaves(errors)), errors


def test_optax_lars_is_a_different_optimizer_under_a_changing_lr():
  # Weights only, so optax.lars's single learning rate is ours for every leaf.
  params64 = {k: v for k, v in make_params(np.float64).items() if k in ("conv", "head")}
  params64["head"] = {"kernel": params64["head"]["kernel"]}
  grads = make_grads(params64, NUM_EPOCHS * STEPS_PER_EPOCH)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params64)

  def both(schedule_name, warmup_epochs):
    config = small_config(schedule=schedule_name, warmup_epochs=warmup_epochs, gradient_scale=1.0)
    tx, schedules = optim.create_optimizer(config, STEPS_PER_EPOCH)
    ours = run_optax(tx, params, grads, jnp.float32)
    theirs_tx = optax.lars(
      learning_rate=schedules["lr_weights"],
      weight_decay=config.optim.weight_decay,
      trust_coefficient=config.optim.eta,
      eps=0.0,
      momentum=config.optim.momentum,
    )
    theirs = run_optax(theirs_tx, params, grads, jnp.float32)
    return max(jax.tree.leaves(relative_errors(theirs, jax.tree.map(np.asarray, ours))))

  # A constant lr commutes with the momentum sum: the two agree.
  assert both("constant", 0.0) < 1e-5
  # Warmup then cosine: optax.lars accumulates lr-scaled updates and ends somewhere else.
  assert both("warmup_cosine", WARMUP_EPOCHS) > 0.05  # measured: 0.13


def test_zero_gradient_and_zero_params_get_trust_ratio_one_without_nans():
  tx = optim.scale_by_lars(weight_decay=0.0, eta=0.001, momentum=0.9)
  params = {"w": jnp.ones((2, 3)), "z": jnp.zeros((3, 2))}
  grads = {"w": jnp.zeros((2, 3)), "z": jnp.full((3, 2), 2.0)}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates["w"], 0.0)
  np.testing.assert_array_equal(updates["z"], 2.0)  # q = 1: the gradient passes unscaled.


def test_schedule_matches_the_closed_form():
  config = config_lib.base_config()  # Batch 2048: bases 0.2 * 8 = 1.6 and 0.0048 * 8 = 0.0384.
  config.num_epochs = 10
  config.optim.warmup_epochs = 2
  steps_per_epoch = 100
  _, schedules = optim.create_optimizer(config, steps_per_epoch)
  warmup, total = 200, 1000
  for key, base in (("lr_weights", 1.6), ("lr_biases", 0.0384)):
    lr = lambda step, key=key: float(schedules[key](step))
    assert lr(0) == 0.0
    np.testing.assert_allclose(lr(1), base / warmup, rtol=1e-6)
    np.testing.assert_allclose(lr(warmup - 1), base * (warmup - 1) / warmup, rtol=1e-6)
    np.testing.assert_allclose(lr(warmup), base, rtol=1e-6)  # cosine starts at q = 1
    mid = warmup + (total - warmup) // 2  # q = 1/2
    np.testing.assert_allclose(lr(mid), base * (0.5 + 0.5 * 0.001), rtol=1e-6)
    q_last = 0.5 * (1 + math.cos(math.pi * (total - 1 - warmup) / (total - warmup)))
    np.testing.assert_allclose(
      lr(total - 1), base * q_last + 0.001 * base * (1 - q_last), rtol=1e-5
    )
    # Beyond the end it stays at the final value instead of rising again.
    np.testing.assert_allclose(lr(total + 500), 0.001 * base, rtol=1e-5)
    # And agrees with the reference function at every step.
    expected = [
      reference_lr(
        s,
        batch_size=2048,
        epochs=10,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=2,
        lr_w=0.2,
        lr_b=0.0048,
      )[key == "lr_biases"]
      for s in range(total)
    ]
    actual = jax.vmap(schedules[key])(jnp.arange(total))
    np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=1e-7)


def test_cosine_and_constant_schedules():
  config = config_lib.base_config()
  config.num_epochs = 10
  config.optim.schedule = "cosine"
  config.optim.scale_lr_by_batch = False
  _, schedules = optim.create_optimizer(config, 10)
  np.testing.assert_allclose(float(schedules["lr_weights"](0)), 0.2, rtol=1e-6)  # no warmup
  np.testing.assert_allclose(float(schedules["lr_weights"](50)), 0.2 * 0.5005, rtol=1e-6)

  config.optim.schedule = "constant"
  config.optim.warmup_epochs = 1
  _, schedules = optim.create_optimizer(config, 10)
  lrs = [float(schedules["lr_biases"](s)) for s in (0, 5, 10, 99)]
  np.testing.assert_allclose(lrs, [0.0, 0.0024, 0.0048, 0.0048], rtol=1e-6)


def test_total_train_steps():
  config = config_lib.base_config()
  config.num_epochs = 2.5
  assert optim.total_train_steps(config, 7) == 17  # floor(17.5)
  config.num_train_steps = 3
  assert optim.total_train_steps(config, 7) == 3


@pytest.mark.parametrize(
  "overrides, steps_per_epoch, match",
  [
    ({"optim.lr_weights": -0.1}, 5, "config.optim.lr_weights"),
    ({"optim.lr_biases": -1e-3}, 5, "config.optim.lr_biases"),
    ({"optim.warmup_epochs": 11.0}, 5, "config.optim.warmup_epochs"),
    ({"optim.name": "adam"}, 5, "config.optim.name"),
    ({"optim.schedule": "step"}, 5, "config.optim.schedule"),
    ({"optim.gradient_scale": 0.0}, 5, "config.optim.gradient_scale"),
    ({"optim.momentum": 1.0}, 5, "config.optim.momentum"),
    ({}, 0, "steps_per_epoch"),
    ({"num_epochs": 0.0}, 5, "config.num_epochs"),
  ],
)
def test_bad_config_raises_a_clear_value_error(overrides, steps_per_epoch, match):
  config = config_lib.base_config()
  config.num_epochs = 10
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  with pytest.raises(ValueError, match=match):
    optim.create_optimizer(config, steps_per_epoch)


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw", "lamb"])
def test_every_optimizer_decays_weights_only(name):
  # Zero gradients: only the weight decay can move anything, and it must spare ndim == 1 leaves.
  config = small_config(name=name, schedule="constant", warmup_epochs=0.0, gradient_scale=1.0)
  tx, schedules = optim.create_optimizer(config, STEPS_PER_EPOCH)
  params = jax.tree.map(jnp.asarray, make_params(np.float32))
  params["bn"]["scale"] = params["bn"]["scale"] + 1.0  # nonzero, so decay would show
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_array_equal(updates["bn"]["scale"], 0.0)
  np.testing.assert_array_equal(updates["bn"]["bias"], 0.0)
  assert float(jnp.abs(updates["conv"]["kernel"]).max()) > 0
  if name in ("sgd", "adamw"):  # Plain `-lr * wd * p` on the first step.
    lr = float(schedules["lr_weights"](0))
    np.testing.assert_allclose(
      updates["conv"]["kernel"], -lr * 1e-2 * params["conv"]["kernel"], rtol=1e-5
    )


def test_groups_are_exactly_the_ndim_one_leaves_of_the_real_model():
  from barlow_jax import models

  config = config_lib.base_config()
  config.model.backbone = "ResNet18"
  config.model.stem = "cifar"
  config.model.width = 0.25
  config.model.projector = "32-32"
  config.model.dtype = "float32"
  model = models.create_model(config.model)
  x = jnp.zeros((2, 8, 8, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, x, train=True))
  params = variables["params"]

  labels = optim.parameter_labels(params)
  mask = optim.weight_mask(params)
  flat_labels = jax.tree_util.tree_flatten_with_path(labels)[0]
  flat_mask = jax.tree.leaves(mask)
  flat_params = jax.tree.leaves(params)
  assert len(flat_labels) == len(flat_mask) == len(flat_params)
  num_biases = 0
  for (path, label), is_weight, leaf in zip(flat_labels, flat_mask, flat_params):
    name = path[-1].key
    # torchvision's layout: convs and projector linears have no bias; every ndim == 1 leaf is a
    # BatchNorm scale or bias, every other one a kernel.
    assert (label == optim.BIASES) == (leaf.ndim == 1) == (name in ("scale", "bias")), path
    assert is_weight == (label == optim.WEIGHTS), path
    num_biases += label == optim.BIASES
  # ResNet-18: 20 BNs (stem 1, 8 blocks x 2, 3 downsample) + 1 projector BN, 2 leaves each.
  assert num_biases == 2 * (20 + 1)
  assert {"backbone", "projector"} <= set(params)

  # The whole optimizer initialises on this tree (shapes only, nothing compiled).
  tx, _ = optim.create_optimizer(config, 10)
  state = jax.eval_shape(tx.init, params)
  assert len(jax.tree.leaves(state)) > len(flat_params)
