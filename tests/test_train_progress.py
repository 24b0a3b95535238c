"""The loop's progress report: log steps, throughput, input wait and ETA of each window."""

import itertools
import logging

import pytest
from clu import periodic_actions

from barlow_jax.train_progress import INPUT_WAIT, TrainProgress


def test_windows_between_log_steps_give_throughput_wait_and_eta(monkeypatch, caplog):
  # A step every 0.5 s of training clock; each wait for a batch lasts 0.125 s.
  report = TrainProgress(
    num_train_steps=10, every_steps=4, batch_size=8, num_devices=2, start_step=0, t=100.0
  )
  ticks = itertools.count(0.0, 0.0625)  # Two clock reads per `timed` block: 0.0625 s each.
  monkeypatch.setattr(periodic_actions.time, "monotonic", lambda: 2 * next(ticks))
  caplog.set_level(logging.INFO)
  windows = {}
  for step in range(1, 11):
    with report.timed(INPUT_WAIT, wait_jax_async_dispatch=False):
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
  report = TrainProgress(
    num_train_steps=100, every_steps=10, batch_size=4, num_devices=1, start_step=35, t=0.0
  )
  triggered = [step for step in range(36, 51) if report(step, float(step - 35))]
  assert triggered == [40, 50]
  assert report.scalars["images_per_second"] == pytest.approx(4.0)
  assert report.eta_seconds == pytest.approx(50.0)
