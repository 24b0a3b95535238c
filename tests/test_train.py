"""Pretraining: 8 devices = 1 device, exact resume after SIGTERM, keep-k, NaN stop, bad configs.

Everything runs a tiny network (ResNet-18 at width 0.125 with the CIFAR stem, 16 px digits,
projector 32-32-32, global batch 16); its runs share one compile of the train step through the
suite's compilation cache (tests/conftest.py).
"""

import functools
import itertools
import logging
import os
import signal

import configs_tiny
import jax
import numpy as np
import pytest
from clu import periodic_actions

from barlow_jax import (
  data,
  losses,
  metrics_file,
  parallel,
  progress,
  train,
  train_state,
  train_step,
)

STEPS = 40


def tiny_config(**overrides):
  # The suite's tiny config (its projector 32-32-32: the shapes of the shared run, tests/
  # shared_run.py, whose programs the compilation cache then holds), with a longer run.
  config = configs_tiny.get_config()
  config.num_train_steps = STEPS
  config.checkpoint_every_steps = 10
  config.keep_checkpoints = 2
  config.image_every_steps = 20
  config.update_from_flattened_dict(overrides)
  return config


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _checkpoint_steps(workdir) -> list[int]:
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  return sorted(int(n) for n in names if n.isdigit())


@pytest.fixture
def patch_batches(monkeypatch):
  """Lets a test act on the training batches (inject a NaN, send SIGTERM) by index."""

  original = data.create_pretrain_iterator

  def install(action):
    def wrapped(config, *, start_step=0, **kwargs):
      for index, batch in enumerate(original(config, start_step=start_step, **kwargs)):
        yield action(start_step + index, batch)

    monkeypatch.setattr(data, "create_pretrain_iterator", wrapped)

  return install


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  # The kNN monitor once, at the end (it changes no parameter: the resumed run below has none).
  return workdir, train.train_and_evaluate(tiny_config(eval_every_steps=STEPS), workdir)


def test_eight_devices_give_the_one_device_parameters(devices):
  config = tiny_config()
  mesh8, mesh1 = parallel.create_mesh(devices), parallel.create_mesh(devices[:1])
  state8 = train_state.create_train_state(
    config, jax.random.key(0), mesh=mesh8, steps_per_epoch=10, num_classes=10
  )
  host = jax.device_get(state8)  # A copy: state8's buffers are donated below.
  state1 = jax.device_put(host, parallel.state_shardings(state8, mesh1))
  p0 = _flat(host.params)
  step8 = train_step.jit_train_step(config, mesh8, state8)
  step1 = train_step.jit_train_step(config, mesh1, state1)
  rng = np.random.default_rng(0)
  for i in range(3):
    batch = {
      "view_a": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
      "view_b": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
      "label": rng.integers(0, 10, size=16).astype(np.int32),
    }
    state8, metrics8 = step8(state8, parallel.global_batch(batch, mesh8), i == 2)
    state1, metrics1 = step1(state1, parallel.global_batch(batch, mesh1), i == 2)
  assert len(state8.params["backbone"]["conv1"]["kernel"].sharding.device_set) == 8
  for name in ("params", "batch_stats", "probe_params"):
    a, b = _flat(getattr(state8, name)), _flat(getattr(state1, name))
    print(name, np.linalg.norm(a - b) / np.linalg.norm(b), np.abs(a - b).max())
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5, name
  assert np.linalg.norm(_flat(state1.params) - p0) > 1e-3  # The steps did move the parameters.
  np.testing.assert_allclose(float(metrics8["loss"]), float(metrics1["loss"]), rtol=1e-5)
  np.testing.assert_allclose(
    float(metrics8["representation_rank"]), float(metrics1["representation_rank"]), rtol=1e-4
  )
  assert step8.num_traces == 1 and step1.num_traces == 1


def _sgd_update_from_jax_grad(config, host, views) -> np.ndarray:
  """-lr * jax.grad(loss) on the global batch, on one device without sharding, flattened."""

  def loss(params):
    variables = {"params": params, "batch_stats": host.batch_stats}
    (_, _, z_a, z_b), _ = host.model.apply(variables, *views, train=True, mutable=["batch_stats"])
    return losses.barlow_twins_loss(z_a, z_b, lambd=float(config.loss.lambd))

  grads = jax.device_get(jax.jit(jax.grad(loss))(host.params))
  lr = lambda g: config.optim.lr_biases if g.ndim == 1 else config.optim.lr_weights
  return _flat(jax.tree.map(lambda g: -lr(g) * g, grads))


def test_an_sgd_step_is_the_gradient_of_the_global_batch_loss_on_8_devices_and_on_1(devices):
  # Plain SGD (no momentum, no decay), not an adaptive or trust-ratio optimizer: those are nearly
  # blind to a uniform gradient scale (a gradient divided by the device count, say); SGD is not.
  overrides = {"optim.name": "sgd", "optim.momentum": 0.0, "optim.lr_weights": 0.1}
  config = tiny_config(**overrides, **{"optim.lr_biases": 0.03, "online_probe": False})
  rng = np.random.default_rng(1)
  views = [rng.normal(size=(16, 8, 8, 3)).astype(np.float32) for _ in range(2)]
  step = jax.jit(functools.partial(train_step.train_step, config=config))
  # An rbg key: this config's initialisation is compiled for this test alone, and under jit
  # rbg's compiles in a fraction of threefry's time on the CPU (the values are not the subject).
  state = train_state.create_train_state(config, jax.random.key(0, impl="rbg"), steps_per_epoch=10)
  host = jax.device_get(state)
  expected = _sgd_update_from_jax_grad(config, host, views)
  assert np.linalg.norm(expected) > 1e-3
  for num_devices in (8, 1):
    mesh = parallel.create_mesh(devices[:num_devices])
    state = jax.device_put(host, parallel.state_shardings(host, mesh))
    batch = parallel.global_batch({"view_a": views[0], "view_b": views[1]}, mesh)
    new, _ = step(state, batch, False)
    update = _flat(jax.device_get(new.params)) - _flat(host.params)
    error = np.linalg.norm(update - expected) / np.linalg.norm(expected)
    assert error < 1e-4, (num_devices, error)


def test_a_run_compiles_once_logs_everything_and_learns(uninterrupted):
  workdir, result = uninterrupted
  assert result.step == STEPS and not result.preempted
  assert result.num_compiles == 1
  steps = [step for step, _ in result.history]
  assert steps == list(range(5, STEPS + 1, 5))
  expected = {
    "loss", "invariance", "redundancy", "lr_weights", "lr_biases", "grad_norm", "param_norm",
    "images_per_second", "images_per_second_per_device", "embedding_std", "corr_diag_mean",
    "corr_offdiag_abs_mean", "representation_rank", "probe_accuracy", "probe_loss",
  }  # fmt: skip
  assert expected <= set(result.history[0][1])
  losses = [m["loss"] for _, m in result.history]
  assert np.mean(losses[-2:]) < 0.8 * losses[0], losses
  first, last = result.history[0][1], result.history[-1][1]
  assert last["corr_diag_mean"] > first["corr_diag_mean"]
  assert 1.0 <= last["representation_rank"] <= 16  # At most min(batch, features).
  assert os.path.exists(os.path.join(workdir, "config.txt"))
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(workdir))


def test_metrics_jsonl_holds_every_logged_scalar_and_the_knn_monitor(uninterrupted):
  workdir, result = uninterrupted
  assert 0.0 < result.history[-1][1]["knn_accuracy"] <= 1.0
  assert all("knn_accuracy" not in scalars for _, scalars in result.history[:-1])
  assert metrics_file.read_metrics(workdir) == dict(result.history)


def test_keep_k_checkpoints_and_the_backbone_export(uninterrupted):
  workdir, result = uninterrupted
  assert _checkpoint_steps(workdir) == [30, 40]
  model_config, variables = train_state.load_exported_backbone(os.path.join(workdir, "backbone"))
  assert model_config.width == 0.125
  np.testing.assert_array_equal(
    variables["params"]["conv1"]["kernel"],
    np.asarray(result.state.params["backbone"]["conv1"]["kernel"]),
  )
  assert set(variables) == {"params", "batch_stats"}


def test_sigterm_saves_and_the_resumed_run_ends_where_the_uninterrupted_one_did(
  uninterrupted, tmp_path, patch_batches
):
  _, reference = uninterrupted
  workdir = str(tmp_path)

  def sigterm_at_17(index, batch):
    if index == 17:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  patch_batches(sigterm_at_17)
  first = train.train_and_evaluate(tiny_config(), workdir)
  assert first.preempted and 10 < first.step < STEPS
  assert _checkpoint_steps(workdir)[-1] == first.step
  handler = signal.getsignal(signal.SIGTERM)
  assert not isinstance(getattr(handler, "__self__", None), progress.PreemptionFlag)  # Put back.

  patch_batches(lambda index, batch: batch)
  second = train.train_and_evaluate(tiny_config(), workdir)
  assert second.step == STEPS and not second.preempted
  # metrics.jsonl: the steps logged before SIGTERM, then the resumed run's, in one file.
  logged = metrics_file.read_metrics(workdir)
  assert sorted(logged) == list(range(5, STEPS + 1, 5))
  assert logged == dict(first.history) | dict(second.history)
  for name in ("params", "batch_stats", "opt_state", "probe_params"):
    a, b = _flat(getattr(second.state, name)), _flat(getattr(reference.state, name))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)


def test_a_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
  tmp_path, patch_batches
):
  def nan_in_step_13(index, batch):
    if index == 12:  # The 13th update.
      # Float views (taken as normalised by the step): uint8 ones cannot hold a NaN. Both views
      # float, as in the 8-device test above: the step's program is that test's (one compile,
      # shared through the suite's compilation cache), not a third one for mixed dtypes.
      view_b = np.asarray(batch["view_b"], np.float32) / 255.0
      batch = dict(batch, view_a=np.full(view_b.shape, np.nan, np.float32), view_b=view_b)
    return batch

  patch_batches(nan_in_step_13)
  with pytest.raises(train.NonFiniteLossError, match=r"step 13\b.*last good checkpoint is step 10"):
    train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert _checkpoint_steps(str(tmp_path)) == [10]


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"batch_size": 12}, "divisible by the 8 devices"),
    ({"dataset.name": "no_such_dataset_xyz"}, "no_such_dataset_xyz"),
    ({"model.backbone": "ResNet19"}, "ResNet19"),
    ({"log_every_steps": 0}, "log_every_steps"),
    ({"num_train_steps": 0}, r"config\.num_train_steps must be -1"),
  ],
)
def test_bad_configs_fail_before_compiling(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "wd"))


def test_an_unwritable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="--workdir=.*not a writable directory"):
    train.train_and_evaluate(tiny_config(), str(blocker / "wd"))


# The loop's progress report: log steps, throughput, input wait and ETA of each window.


def test_windows_between_log_steps_give_throughput_wait_and_eta(monkeypatch, caplog):
  # A step every 0.5 s of training clock; each wait for a batch lasts 0.125 s.
  report = train.TrainProgress(
    num_train_steps=10, every_steps=4, batch_size=8, num_devices=2, start_step=0, t=100.0
  )
  ticks = itertools.count(0.0, 0.0625)  # Two clock reads per `timed` block: 0.0625 s each.
  monkeypatch.setattr(periodic_actions.time, "monotonic", lambda: 2 * next(ticks))
  caplog.set_level(logging.INFO)
  windows = {}
  for step in range(1, 11):
    with report.timed(train.INPUT_WAIT, wait_jax_async_dispatch=False):
      pass
    assert report.is_log_step(step) == (step in (4, 8, 10))
    if report(step, 100.0 + 0.5 * step):
      windows[step] = (dict(report.scalars), report.eta_seconds)
      report.log(step, loss=1.5)
  assert sorted(windows) == [4, 8, 10]
  # 4 steps of 8 images in 2 s, 0.5 s of it waiting; 6 steps left at 0.5 s each.
  assert windows[4][0] == pytest.approx(
    {"images_per_second": 16.0, "images_per_second_per_device": 8.0, "input_wait_fraction": 0.25}
  )
  assert windows[4][1] == pytest.approx(3.0)
  assert windows[10][0]["images_per_second"] == pytest.approx(16.0)  # 2 steps in 1 s.
  assert windows[10][1] == 0.0
  assert "step 4/10 (40.0%)  loss 1.5  16 img/s (8/device)  input wait 25%  ETA 0m03s" in (
    caplog.text
  )


def test_a_resumed_run_measures_its_first_window_from_the_resumed_step():
  report = train.TrainProgress(
    num_train_steps=100, every_steps=10, batch_size=4, num_devices=1, start_step=35, t=0.0
  )
  triggered = [step for step in range(36, 51) if report(step, float(step - 35))]
  assert triggered == [40, 50]
  assert report.scalars["images_per_second"] == pytest.approx(4.0)
  assert report.eta_seconds == pytest.approx(50.0)
