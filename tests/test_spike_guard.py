"""The loss-spike guard (`config.optim.skip_nonfinite`): skip, count, keep the state, stop after N.

The transform is checked against a NumPy float64 restatement of its rule; the train step on 8
devices with a NaN batch and a loss spike; the loop with a run that goes NaN for good.
"""

import json
import math

import configs_tiny
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from barlow_jax import config_validation, data, parallel, spike_guard, train, train_state
from barlow_jax import train_step as step_lib


def _numpy_rule(loss, grad_norm, history, factor):
  """float64 restatement: skip when not finite, or above factor x median of a full history."""
  if not (np.isfinite(loss) and np.isfinite(grad_norm)):
    return True
  full = len(history) > 0 and np.all(np.isfinite(history))
  return bool(factor > 0 and full and loss > factor * np.median(np.asarray(history, np.float64)))


def test_the_transform_skips_what_the_rule_says_and_keeps_the_inner_state():
  window, factor = 3, 2.0
  tx = spike_guard.skip_spikes(optax.sgd(0.1, momentum=0.9), spike_factor=factor, window=window)
  params = {"w": jnp.ones(4)}
  state = tx.init(params)
  update = jax.jit(lambda g, s, loss: tx.update(g, s, params, loss=loss))
  grad = {"w": jnp.full(4, 0.5)}
  nan_grad = {"w": jnp.array([0.5, jnp.nan, 0.5, 0.5])}
  # (loss, grads): fills the window, a NaN loss, a NaN gradient, a spike, a normal step, a spike.
  steps = [(4.0, grad), (3.0, grad), (5.0, grad), (np.nan, grad), (4.0, nan_grad)]
  steps += [(8.5, grad), (7.5, grad), (20.0, grad)]
  history, total, consecutive = [], 0, 0
  for loss, g in steps:
    grad_norm = float(np.sqrt(np.sum(np.square(np.asarray(g["w"], np.float64)))))
    full = history[-window:] if len(history) >= window else []
    expect = _numpy_rule(loss, grad_norm, full, factor)
    before = state
    updates, state = update(g, state, jnp.float32(loss))
    assert bool(spike_guard.step_skipped(state)) == expect, (loss, history)
    if expect:
      total, consecutive = total + 1, consecutive + 1
      np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
      for a, b in zip(jax.tree.leaves(before.inner_state), jax.tree.leaves(state.inner_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
      consecutive = 0
      history.append(loss)
      assert np.all(np.isfinite(np.asarray(updates["w"]))) and np.any(np.asarray(updates["w"]))
    m = jax.device_get(spike_guard.metrics(state))
    assert (m["skipped_steps"], m["consecutive_skipped_steps"]) == (total, consecutive)
  # 4, 3, 5 fill the window (median 4): 8.5 > 2 x 4 is a spike, 7.5 is not; the window is then
  # 3, 5, 7.5 (median 5): 20 > 10 is a spike.
  assert total == 4 and consecutive == 1


def test_the_spike_factor_must_be_above_one_or_off():
  config = configs_tiny.get_config()
  for key, value, match in (
    ("spike_factor", 0.5, r"config\.optim\.spike_factor must be 0 \(off"),
    ("spike_window", 0, r"config\.optim\.spike_window must be >= 1"),
    ("max_consecutive_skips", 0, r"config\.optim\.max_consecutive_skips must be >= 1"),
  ):
    bad = config.copy_and_resolve_references()
    bad.optim[key] = value
    with pytest.raises(ValueError, match=match):
      config_validation.validate_numbers(bad)


def _guarded_config(**optim):
  # Window 1: the spike test compares a loss with the last accepted one. Every test here uses
  # the same guard settings, so that they compile one program (the suite's compilation cache,
  # tests/conftest.py).
  config = configs_tiny.get_config()
  config.optim.skip_nonfinite = True
  config.optim.spike_factor = 3.0
  config.optim.spike_window = 1
  config.optim.update(optim)
  return config


def _float_batch(rng, same_views: bool, nan: bool = False):
  a = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
  b = a.copy() if same_views else rng.normal(size=a.shape).astype(np.float32)
  if nan:
    a[0, 0, 0, 0] = np.nan
  return {"view_a": a, "view_b": b, "label": rng.integers(0, 10, size=16).astype(np.int32)}


def _host(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _parts(state):
  return (state.params, state.batch_stats, state.opt_state.inner_state, state.probe_params)


def _assert_same(before, after):
  for a, b in zip(before, after, strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_nan_and_a_spike_leave_the_state_unchanged_on_8_devices(devices):
  # Identical views give a zero invariance term (loss ~1 here); unrelated views one near the
  # projector width (~65): far above 3x the last accepted loss, the "spike".
  config = _guarded_config()
  mesh = parallel.create_mesh(devices)
  state = train_state.create_train_state(
    config, jax.random.key(0), mesh=mesh, steps_per_epoch=10, num_classes=10
  )
  step = step_lib.jit_train_step(config, mesh, state)
  rng = np.random.default_rng(0)
  batches = [_float_batch(rng, True), _float_batch(rng, True, nan=True), _float_batch(rng, False)]
  expected_skips = [0, 1, 2]
  for batch, skips in zip(batches, expected_skips, strict=True):
    before, count = _host(_parts(state)), int(state.step)
    state, metrics = step(state, parallel.global_batch(batch, mesh), False)
    metrics = jax.device_get(metrics)
    assert int(state.step) == count + 1  # The data position moves on either way.
    assert metrics["skipped_steps"] == skips
    after = _host(_parts(state))
    if skips:
      _assert_same(before, after)
      assert metrics["consecutive_skipped_steps"] == skips
    else:
      assert not np.array_equal(before[0], after[0])
  assert not np.isfinite(batches[1]["view_a"]).all()
  assert step.num_traces == 1


def test_the_run_skips_an_isolated_nan_and_stops_after_n_in_a_row(tmp_path, monkeypatch):
  original = data.create_pretrain_iterator

  def float_views_nan_at(config, *, start_step=0, **kwargs):
    # Float views (taken as normalised by the step): uint8 ones cannot hold a NaN.
    for index, batch in enumerate(original(config, start_step=start_step, **kwargs)):
      views = {k: batch[k].astype(np.float32) / 255.0 for k in ("view_a", "view_b")}
      if start_step + index == 3 or start_step + index >= 12:
        views["view_a"] = np.full(views["view_a"].shape, np.nan, np.float32)
      yield dict(batch, **views)

  monkeypatch.setattr(data, "create_pretrain_iterator", float_views_nan_at)
  config = _guarded_config(max_consecutive_skips=3)
  config.num_train_steps, config.checkpoint_every_steps, config.log_every_steps = 20, 10, 5
  with pytest.raises(
    train.NonFiniteLossError,
    match=r"3 consecutive steps skipped .*steps 13\.\.15.*max_consecutive_skips=3.*step 12",
  ):
    train.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  logged = {line["step"]: line for line in lines}
  # Step 4's NaN was skipped and the run went on: finite losses at steps 5 and 10.
  assert logged[5]["skipped_steps"] == 1 and logged[10]["skipped_steps"] == 1
  assert math.isfinite(logged[10]["loss"]) and logged[10]["consecutive_skipped_steps"] == 0
