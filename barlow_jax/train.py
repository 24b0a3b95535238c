"""Pretraining: one config, every device of every host, resumable, observable.

    python -m barlow_jax.main --config=configs/cluttered_digits.py --workdir=workdirs/cd

Parallelism: one `jax.jit` over a `Mesh` of all devices with one axis `"data"`, the global batch
sharded on its first axis and the state replicated or split with `config.parallel.fsdp_min_size`
(`barlow_jax.parallel`). Every batch statistic is over the global batch without an `axis_name`,
and `jax.grad` of the global loss is the true gradient (docs/reference.md §3).

The workdir is the run (layout: `barlow_jax.checkpointing`); all of it reads back on any device
count.

Running the same command again resumes from the latest checkpoint. The data position is the step
(the input pipeline's `start_step` replays exactly the batches k, k+1, ...) and nothing else in a
step is random (augmentations are seeded on the host from (seed, epoch, example, view), or, with
`config.augment.on_device`, inside the step from (seed, step, example, view); the network has no
dropout), so an interrupted-and-resumed run ends with the parameters of an uninterrupted one.

The parts, each in its module: `train_setup` (the run's constants, derived once), `train_state`
(the state, its checkpoints and the backbone export), `train_step` (the update, jitted),
`parallel` (mesh, shardings, global batches), the kNN monitor (`evaluation.knn`), `progress`
(SIGTERM, Ctrl-C), `metrics_file` (metrics.jsonl, the pretraining clock), `finish` (the export
and the end-of-run evaluation). This module is the loop that drives them, and its progress
report (`TrainProgress`: throughput, input wait, ETA); the names the parts had here are
deprecated (`_DEPRECATED`, removed in 0.3).
"""

import dataclasses
import math
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from clu import periodic_actions

from barlow_jax import (
  checkpointing,
  finish,
  monitors,
  progress,
  spike_guard,
  train_setup,
  train_state,
)
from barlow_jax import train_step as step_lib
from barlow_jax._deprecations import deprecation_getattr
from barlow_jax.evaluation import knn

# The names this module had before they moved to their own modules (removed in 0.3).
_DEPRECATED = {
  "HEATMAP_SIZE": "barlow_jax.train_step.HEATMAP_SIZE",
  "TrainState": "barlow_jax.train_state.TrainState",
  "create_train_state": "barlow_jax.train_state.create_train_state",
  "restore_state": "barlow_jax.train_state.restore_state",
  "backbone_of": "barlow_jax.train_state.backbone_of",
  "export_backbone": "barlow_jax.train_state.export_backbone",
  "load_exported_backbone": "barlow_jax.train_state.load_exported_backbone",
  "train_step": "barlow_jax.train_step.train_step",
  "effective_rank": "barlow_jax.monitors.effective_rank",
  "jit_train_step": "barlow_jax.train_step.jit_train_step",
  "create_mesh": "barlow_jax.parallel.create_mesh",
  "state_shardings": "barlow_jax.parallel.state_shardings",
  "batch_sharding": "barlow_jax.parallel.batch_sharding",
  "global_batch": "barlow_jax.parallel.global_batch",
  "device_prefetch": "barlow_jax.parallel.device_prefetch",
  "validate_config": "barlow_jax.train_setup.validate_pretraining",
  "prepare_workdir": "barlow_jax.checkpointing.prepare_workdir",
}
__getattr__ = deprecation_getattr(__name__, _DEPRECATED)


# The `timed` part the loop measures its wait for the next batch in.
INPUT_WAIT = "input_wait"


class TrainProgress(periodic_actions.ReportProgress):
  """clu's `ReportProgress` on the log steps, with the trainer's scalars and log line.

  Args: the run's length `num_train_steps` (its last step is always a log step), `every_steps`
  (`config.log_every_steps`), the global `batch_size`, `num_devices` (for the per-device rate),
  `start_step` (0 or the resumed checkpoint's) and the training clock `t` at `start_step`.

  Call it after every step as `report(step, t)`; on the log steps it returns True, after which
  `scalars` (images_per_second, images_per_second_per_device, input_wait_fraction) and
  `eta_seconds` describe the window that ended. The loop's clock leaves out the kNN monitor; the
  first window includes the step's compilation. Wrap the wait for each batch in
  `report.timed(INPUT_WAIT, wait_jax_async_dispatch=False)`.
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
    n, s = self._num_train_steps, self.scalars
    logging.info(
      f"step {step}/{n} ({100.0 * step / n:.1f}%)  loss {loss:.4g}  "
      f"{s['images_per_second']:.0f} img/s ({s['images_per_second_per_device']:.0f}/device)  "
      f"input wait {100.0 * s['input_wait_fraction']:.0f}%  "
      f"ETA {progress.format_duration(self.eta_seconds)}"
    )


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient became NaN or inf; the run stopped without saving that state."""


@dataclasses.dataclass
class TrainResult:
  """What `train_and_evaluate` returns.

  Attributes:
    state: the final `TrainState` (on the devices).
    step: updates done (== total steps unless preempted).
    total_steps: the run's length.
    preempted: True when SIGTERM or Ctrl-C (SIGINT) stopped the run: in pretraining (a
      checkpoint at `step` was saved) or in the final evaluation (`step == total_steps`; nothing
      of it was written).
    num_compiles: how many times the train step was traced (1 in a healthy run).
    history: `[(step, scalars)]` of every logged step of this invocation.
    evaluation: the end-of-run evaluation's results (None when not run).
  """

  state: train_state.TrainState
  step: int
  total_steps: int
  preempted: bool
  num_compiles: int
  history: list[tuple[int, dict[str, float]]]
  evaluation: Any = None
  stop_signal: str | None = None  # "SIGTERM" or "SIGINT" when `preempted`.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Pretrains (resuming from `workdir` when it holds a checkpoint), exports, evaluates.

  Args:
    config: run config (`barlow_jax.config.base_config()` layout; see `configs/`).
    workdir: the run's directory (created if missing).

  Returns:
    A `TrainResult` (final state, steps, whether SIGTERM stopped it, compilations, logged
    metrics, evaluation results).

  Raises:
    ValueError: a config or workdir the run cannot use (before anything compiles).
    NonFiniteLossError: the loss or gradient became NaN / inf; names the step; the last
      checkpoint written before it is kept. With `config.optim.skip_nonfinite`: after
      `config.optim.max_consecutive_skips` skipped steps in a row (`barlow_jax.spike_guard`).
  """
  # SIGTERM or Ctrl-C from here on saves and stops (during start-up: before the first step).
  flag = progress.PreemptionFlag()
  try:
    return _train_and_evaluate(config, workdir, flag)
  finally:
    flag.restore()


def _train_and_evaluate(config, workdir: str, flag: progress.PreemptionFlag) -> TrainResult:
  setup = train_setup.prepare(config, workdir)
  batches = train_setup.pretrain_batches(setup)
  state = train_setup.initial_state(setup)
  step_fn = step_lib.jit_train_step(
    config, setup.mesh, state, shardings=setup.state_shardings, views=setup.step_views
  )
  writer = train_setup.metric_writer(setup)
  train_setup.log_plan(setup)
  loop = _Loop(setup, state, step_fn, writer, flag)
  try:
    loop.run(batches)
  finally:
    setup.manager.wait_until_finished()
    writer.flush()
  return _end_of_run(setup, loop, writer, flag)


class _Loop:
  """The pretraining loop: steps, metrics, checkpoints, the kNN monitor, SIGTERM, NaN checks.

  clu periodic actions decide what happens after a step: `TrainProgress` on the log steps,
  `PeriodicCallback`s for checkpoints (every `checkpoint_every_steps` and at the end) and the kNN
  monitor (every `eval_every_steps` and at the end). A step's loss is checked for NaN one step
  late (no wait for the device), except on the steps that read their metrics anyway and before
  every save, so no checkpoint holds a non-finite state.
  """

  def __init__(self, setup, state, step_fn, writer, flag):
    config = setup.config
    self.setup, self.config, self.state = setup, config, state
    self.step_fn, self.writer, self.flag = step_fn, writer, flag
    self.step = self.last_saved = setup.start_step
    self.preempted = False
    self.history: list[tuple[int, dict[str, float]]] = []
    self.pending = None  # (step, metrics) not yet checked for NaN.
    self.monitor_seconds = 0.0
    self.start_time = time.perf_counter()
    self.progress = TrainProgress(
      num_train_steps=setup.total_steps,
      every_steps=int(config.log_every_steps),
      batch_size=int(config.batch_size),
      num_devices=jax.device_count(),
      start_step=setup.start_step,
      t=self.clock(),
    )
    self.recorded = False  # Whether this invocation wrote the workdir's config record.
    self.actions = [
      periodic_actions.PeriodicCallback(
        every_steps=int(config.checkpoint_every_steps),
        on_steps=[setup.total_steps],
        callback_fn=lambda step, t: self._save(step),
      )
    ]
    # The last step's monitor runs after the backbone export (`_end_of_run`): a failure there
    # must not cost the export.
    self.knn_enabled = setup.knn_monitor
    if self.knn_enabled:
      self.actions.append(
        periodic_actions.PeriodicCallback(
          every_steps=int(config.eval_every_steps),
          callback_fn=lambda step, t: step < setup.total_steps and self.knn_monitor(step),
        )
      )

  def clock(self) -> float:
    """Pretraining seconds of this invocation: compilation included, kNN monitor excluded."""
    return time.perf_counter() - self.start_time - self.monitor_seconds

  def run(self, batches) -> None:
    """Steps until the end of the run, or saves and returns when SIGTERM arrived."""
    while self.step < self.setup.total_steps:
      if self.flag.should_stop(self.step):
        self._stop()
        return
      with self.progress.timed(INPUT_WAIT, wait_jax_async_dispatch=False):
        batch = next(batches)
      self._train_step(batch)
    self._check_pending()

  def _train_step(self, batch) -> None:
    done = self.step + 1
    is_log = self.progress.is_log_step(done)
    image_every = int(self.config.image_every_steps)
    is_image = image_every > 0 and done % image_every == 0
    self.state, metrics = self.step_fn(self.state, batch, is_log or is_image)
    self._check_pending()
    self.pending = (done, metrics)
    self.step = done
    host = None
    if is_log or is_image:
      self._check_pending()
      host = jax.device_get(metrics)
    self.progress(done, self.clock())
    if is_log:
      self._write_scalars(done, host)
    if is_image:
      self.writer.write_images(done, monitors.heatmap_images(host))
    for action in self.actions:
      action(done)

  def _write_scalars(self, step: int, host: dict[str, Any]) -> None:
    scalars = {k: float(v) for k, v in host.items() if not k.startswith("heatmap_")}
    for name in ("lr_weights", "lr_biases"):
      scalars[name] = float(self.setup.schedules[name](step - 1))
    scalars.update(self.progress.scalars)
    scalars["epoch"] = step / self.setup.steps_per_epoch
    self.history.append((step, scalars))
    self.writer.write_scalars(step, scalars)
    if jax.process_index() == 0:
      self.progress.log(step, scalars["loss"])

  def _check_pending(self) -> None:
    """Raises `NonFiniteLossError` if the last unchecked step's loss or gradient is not finite,
    or (`config.optim.skip_nonfinite`) after too many steps skipped in a row."""
    if self.pending is None:
      return
    (step, metrics), self.pending = self.pending, None
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    if "consecutive_skipped_steps" in metrics:
      limit = int(self.config.optim.max_consecutive_skips)
      reason = spike_guard.stop_reason(step, metrics, max_consecutive_skips=limit)
    elif math.isfinite(loss) and math.isfinite(grad_norm):
      reason = ""
    else:
      reason = (
        f"Non-finite training loss at step {step} (loss={loss}, grad_norm={grad_norm}): "
        "stopping. Nothing from this step was saved. Lower the learning rate "
        "(config.optim.lr_weights / lr_biases) or check the input data"
      )
    if reason:
      manager = self.setup.manager
      manager.wait_until_finished()
      raise NonFiniteLossError(
        f"{reason}; the last good checkpoint is step {manager.latest_step()} in "
        f"{self.setup.workdir}/checkpoints: rerun the same command to resume from it."
      )

  def _save(self, step: int) -> None:
    self._check_pending()
    train_state.save_state(self.setup.manager, self.state, step)
    self.record()
    self.setup.clock.saved(step, self.clock(), total_steps=self.setup.total_steps)
    self.last_saved = step

  def record(self) -> None:
    """The workdir's config record, once, with this invocation's first checkpoint: replaced when
    the workdir held no checkpoint (a record there is from an invocation that saved none)."""
    if not self.recorded:
      s, replace = self.setup, self.setup.start_step == 0
      checkpointing.write_config_record(s.config_json, s.config_text, s.workdir, replace=replace)
      self.recorded = True

  def knn_monitor(self, step: int) -> None:
    """Runs the kNN monitor on the current state and logs its accuracy at `step`."""
    start = time.perf_counter()
    accuracy = knn.monitor_accuracy(self.state, self.config, self.setup.mesh)
    self.monitor_seconds += time.perf_counter() - start
    self.writer.write_scalars(step, {"knn_accuracy": accuracy})
    logging.info("step %d: kNN top-1 %.2f%%", step, 100.0 * accuracy)
    if self.history and self.history[-1][0] == step:
      self.history[-1][1]["knn_accuracy"] = accuracy

  def _stop(self) -> None:
    self._check_pending()
    if self.step != self.last_saved:
      self._save(self.step)
    self.preempted = True
    logging.warning(
      "Preempted: saved step %d in %s/checkpoints; exiting.", self.step, self.setup.workdir
    )


def _end_of_run(setup, loop: _Loop, writer, flag) -> TrainResult:
  """The last checkpoint, the pretraining record, the backbone export, the final evaluation."""
  train_seconds = loop.clock()
  num_compiles = loop.step_fn.num_traces
  if num_compiles > 1:
    logging.warning("train_step was compiled %d times in this run.", num_compiles)
  result = TrainResult(
    state=loop.state,
    step=loop.step,
    total_steps=setup.total_steps,
    preempted=loop.preempted,
    num_compiles=num_compiles,
    history=loop.history,
  )
  if loop.preempted:
    result.stop_signal = flag.signal_name
    setup.manager.close()
    writer.close()
    return result
  if loop.last_saved != setup.total_steps:
    train_state.save_state(setup.manager, loop.state, setup.total_steps)
    loop.record()
  finish.close_pretraining(setup, loop.state, train_seconds)
  if loop.knn_enabled and loop.step > setup.start_step:
    loop.knn_monitor(loop.step)  # After the export: a failure here keeps the saved run.
  writer.close()
  if setup.config.eval.final:
    result.evaluation, stopped = finish.final_evaluation(
      setup.config,
      setup.workdir,
      train_state.backbone_of(loop.state),
      should_stop=lambda: flag.received,
      checkpoint_step=loop.step,
    )
    result.preempted = stopped
  if result.preempted:
    result.stop_signal = flag.signal_name
  return result
