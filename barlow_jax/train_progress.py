"""The pretraining loop's progress report: throughput, input wait and ETA on the log steps.

A clu `ReportProgress` (flax examples' progress hook) that the loop calls after every step. On the
log steps (every `log_every_steps` and the last) it measures the window since the previous log
step and gives the scalars logged with the step's metrics,

    images_per_second, images_per_second_per_device, input_wait_fraction,

and the progress line

    step 200/1000 (20.0%)  loss 612.3  1520 img/s (190/device)  input wait 3%  ETA 4m10s

The time it is given is the loop's training clock, which leaves out the kNN monitor, so neither
the throughput nor the ETA count evaluation time; the window of the first log step includes the
compilation of the step.
"""

from absl import logging
from clu import periodic_actions

from barlow_jax import progress

# The `timed` part the loop measures its wait for the next batch in.
INPUT_WAIT = "input_wait"


class TrainProgress(periodic_actions.ReportProgress):
  """`ReportProgress` on the log steps, with the trainer's scalars and log line.

  Args:
    num_train_steps: the run's length (its last step is always a log step).
    every_steps: `config.log_every_steps`.
    batch_size: the global batch (images per step).
    num_devices: devices of the run (for the per-device rate).
    start_step: the step the run starts from (0 or the resumed checkpoint's).
    t: the training clock at `start_step`.

  Call it after every step as `progress(step, t)` with the training clock; it returns True on
  the log steps, after which `scalars` and `eta_seconds` describe the window that ended.
  Wrap the wait for each batch in `progress.timed(INPUT_WAIT, wait_jax_async_dispatch=False)`.
  """

  def __init__(
    self,
    *,
    num_train_steps: int,
    every_steps: int,
    batch_size: int,
    num_devices: int,
    start_step: int,
    t: float,
  ):
    super().__init__(num_train_steps=num_train_steps, every_steps=every_steps, every_secs=None)
    self.batch_size = int(batch_size)
    self.num_devices = int(num_devices)
    self.scalars: dict[str, float] = {}
    self.eta_seconds = float("nan")
    self._waited_before = 0.0
    super().__call__(start_step, t)  # Opens the first window (the first call never triggers).

  def is_log_step(self, step: int) -> bool:
    """Whether the call for `step` will trigger (so the step computes its monitors)."""
    return step % self._every_steps == 0 or step == self._num_train_steps

  def _apply(self, step: int, t: float) -> None:
    # Replaces clu's work-unit note (a second log line) with the trainer's own scalars.
    seconds = max(t - self._previous_time, 1e-9)
    steps = step - self._previous_step
    waited = self._time_per_part[INPUT_WAIT] - self._waited_before
    self._waited_before = self._time_per_part[INPUT_WAIT]
    images_per_second = steps * self.batch_size / seconds
    self.scalars = {
      "images_per_second": images_per_second,
      "images_per_second_per_device": images_per_second / self.num_devices,
      "input_wait_fraction": waited / seconds,
    }
    self.eta_seconds = (self._num_train_steps - step) * seconds / max(steps, 1)

  def log(self, step: int, loss: float) -> None:
    """Logs the progress line of log step `step` (after the call that triggered on it)."""
    logging.info(
      "step %d/%d (%.1f%%)  loss %.4g  %.0f img/s (%.0f/device)  input wait %.0f%%  ETA %s",
      step,
      self._num_train_steps,
      100.0 * step / self._num_train_steps,
      loss,
      self.scalars["images_per_second"],
      self.scalars["images_per_second_per_device"],
      100.0 * self.scalars["input_wait_fraction"],
      progress.format_duration(self.eta_seconds),
    )
