"""Scale-out for real: two training processes over loopback, topology-changing restore, faults.

Every multi-process run here is `python -m barlow_jax.launch --num_processes=2
--devices_per_process=4` of `tests/configs_tiny.py` (ResNet-18 at width 0.125, 16 px digits,
global batch 16, 14 steps, a checkpoint every 6), through `tests/scale_out_worker.py`: plain
`barlow_jax.main` plus a pause hook that holds the run at a known batch while the test acts on it.
The children share a persistent compilation cache, so only the first run compiles the step.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from barlow_jax import checkpointing, data, metrics_file, parallel, train, train_state

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TESTS = os.path.join(_ROOT, "tests")
_CONFIG = os.path.join(_TESTS, "configs_tiny.py")
STEPS = 14
# Launcher start to exit for one run of the tiny config; generous for a loaded CI machine.
_RUN_TIMEOUT_S = 420
# After SIGKILL to one process: the launcher's grace period (5 s) plus shutdown.
_KILL_BOUND_S = 60


def _tiny_config():
  sys.path.insert(0, _TESTS)
  try:
    import configs_tiny
  finally:
    sys.path.remove(_TESTS)
  return configs_tiny.get_config()


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _checkpoint_steps(workdir) -> list[int]:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


class _Launch:
  """One `barlow_jax.launch` of the tiny config in the background, its output in a file."""

  def __init__(self, workdir, cache_dir, *overrides: str, env: dict[str, str] | None = None):
    self.workdir = str(workdir)
    self.log_path = self.workdir + ".log"
    command = [
      sys.executable,
      "-m",
      "barlow_jax.launch",
      "--num_processes=2",
      "--devices_per_process=4",
      "--grace_s=5",
      "--module=scale_out_worker",
      "--",
      f"--config={_CONFIG}",
      f"--workdir={self.workdir}",
      *overrides,
    ]
    path = os.pathsep.join(p for p in (_TESTS, os.environ.get("PYTHONPATH", "")) if p)
    child_env = dict(
      os.environ,
      PYTHONPATH=path,
      JAX_COMPILATION_CACHE_DIR=str(cache_dir),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
      **(env or {}),
    )
    self._log = open(self.log_path, "w")
    self.start = time.monotonic()
    self.proc = subprocess.Popen(
      command, cwd=_ROOT, env=child_env, stdout=self._log, stderr=subprocess.STDOUT, text=True
    )

  def output(self) -> str:
    with open(self.log_path) as f:
      return f.read()

  def wait_for(self, condition, what: str, timeout: float = _RUN_TIMEOUT_S) -> None:
    """Polls `condition()` until true; fails (killing the run) on timeout or an early exit."""
    deadline = time.monotonic() + timeout
    while not condition():
      if self.proc.poll() is not None or time.monotonic() > deadline:
        self.kill()
        pytest.fail(f"run ended or timed out waiting for {what}:\n{self.output()[-5000:]}")
      time.sleep(0.1)

  def wait(self, timeout: float = _RUN_TIMEOUT_S) -> tuple[int, str]:
    try:
      code = self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"the launcher did not exit within {timeout:.0f}s:\n{self.output()[-5000:]}")
    self._log.close()
    return code, self.output()

  def pids(self) -> list[int]:
    match = re.search(r"^launch: .* pids \[(\d+), (\d+)\]$", self.output(), re.MULTILINE)
    assert match, self.output()
    return [int(match.group(1)), int(match.group(2))]

  def kill(self) -> None:
    """Test clean-up: the launcher and its children (they run in their own sessions)."""
    children = []
    try:
      children = self.pids()
    except AssertionError:
      pass
    for pid in [*children, self.proc.pid]:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    self.proc.wait(timeout=30)
    self._log.close()


def _run_to_end(workdir, cache_dir, *overrides: str) -> str:
  code, output = _Launch(workdir, cache_dir, *overrides).wait()
  assert code == 0, output[-5000:]
  return output


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """The suite's compilation cache (tests/conftest.py), else one for this file's runs."""
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def run_2x4(tmp_path_factory, cache_dir):
  """The uninterrupted 2 x 4 run: (workdir, launcher output)."""
  workdir = tmp_path_factory.mktemp("run_2x4") / "wd"
  return str(workdir), _run_to_end(workdir, cache_dir)


def _restore(workdir: str, step: int, devices) -> train_state.TrainState:
  """Checkpoint `step` of `workdir` restored onto a mesh of `devices` (this process)."""
  config = _tiny_config()
  mesh = parallel.create_mesh(devices)

  def init(rng):
    return train_state.create_train_state(
      config,
      rng,
      mesh=mesh,
      steps_per_epoch=data.steps_per_epoch(config),
      num_classes=data.num_classes(config),
    )

  # Shapes only: restoring needs the structure, not initialised values (and no compilation).
  target = jax.eval_shape(init, jax.random.key(0))
  manager = checkpointing.checkpoint_manager(workdir, max_to_keep=int(config.keep_checkpoints))
  try:
    return train_state.restore_state(manager, target, mesh, step)
  finally:
    manager.close()


_STATE_FIELDS = ("params", "batch_stats", "opt_state", "probe_params", "probe_opt_state")


def _assert_same_state(
  a: train_state.TrainState, b: train_state.TrainState, *, rtol: float
) -> None:
  assert int(a.step) == int(b.step)
  for name in _STATE_FIELDS:
    x, y = _flat(getattr(a, name)), _flat(getattr(b, name))
    error = np.linalg.norm(x - y) / np.linalg.norm(y)
    assert error <= rtol, f"{name}: relative error {error:.2e}"


def test_the_2x4_run_logs_from_process_0_and_writes_one_checkpoint_per_save(run_2x4):
  workdir, output = run_2x4
  assert re.search(r"^\[p0\] .*Process 0/2, 4 local devices of 8", output, re.MULTILINE), output
  assert re.search(r"^\[p1\] .*Process 1/2, 4 local devices of 8", output, re.MULTILINE), output
  progress = re.findall(r"^\[p(\d)\] .*step (\d+)/14 ", output, re.MULTILINE)
  assert progress == [("0", "5"), ("0", "10"), ("0", "14")], progress
  # metrics.jsonl from process 0 alone: one line per logged step.
  lines = (checkpointing.path(workdir) / metrics_file.FILENAME).read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [5, 10, 14]
  assert sorted(metrics_file.read_metrics(workdir)) == [5, 10, 14]
  assert _checkpoint_steps(workdir) == [6, 12, 14]
  assert os.path.exists(os.path.join(workdir, "backbone", "model_config.json"))


def test_two_processes_train_like_one_process_on_the_same_global_batches(
  run_2x4, tmp_path, monkeypatch, devices
):
  """1 x 8 devices fed [process 0's rows; process 1's rows] ends where the 2 x 4 run was."""
  original = data.create_pretrain_iterator

  def both_shards(config, *, start_step=0, process_index=None, process_count=None):
    del process_index, process_count
    shards = [
      original(config, start_step=start_step, process_index=p, process_count=2) for p in range(2)
    ]
    for parts in zip(*shards):
      yield {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

  monkeypatch.setattr(data, "create_pretrain_iterator", both_shards)
  # The constant learning rate makes a 6-step run the first 6 steps of the 14-step one.
  config = _tiny_config()
  config.num_train_steps = 6
  one_process = train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert one_process.step == 6 and len(devices) == 8
  two_processes = _restore(run_2x4[0], 6, devices)
  later = _restore(run_2x4[0], 12, devices)
  assert np.linalg.norm(_flat(later.params) - _flat(two_processes.params)) > 1e-3  # It moves.
  _assert_same_state(one_process.state, two_processes, rtol=1e-5)


def test_the_two_processes_read_disjoint_halves_that_make_the_epoch():
  """With the augmentations off, every view is a training image: which ones did each read?"""
  config = _tiny_config()
  for view in (config.augment.view_a, config.augment.view_b):
    view.crop_area = (1.0, 1.0)
    view.crop_aspect = (1.0, 1.0)
    view.crop_method = "bilinear"
    for key in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "noise_std"):
      view[key] = 0.0
  images, _ = data.load_labelled_arrays(config, "train")  # Same normalisation.
  mean, std = np.array(config.augment.mean), np.array(config.augment.std)
  pixels = np.round((images * std + mean) * 255) / 255  # The views' 8-bit pixels.
  table = ((pixels - mean) / std).reshape(len(images), -1).astype(np.float64)
  spe = data.steps_per_epoch(config)
  seen = []
  for p in range(2):
    it = data.create_pretrain_iterator(config, process_index=p, process_count=2)
    batches = [data.normalize_views(next(it), config) for _ in range(spe)]
    views = np.concatenate([b["view_a"] for b in batches]).reshape(spe * 8, -1)
    views = views.astype(np.float64)
    distances = (views**2).sum(1)[:, None] - 2 * views @ table.T + (table**2).sum(1)[None]
    ids = distances.argmin(1)
    # Each view is exactly one training image (to a rounding tie of its 8-bit pixels; the
    # next nearest image is > 100 away).
    assert distances.min(1).max() < 0.1
    seen.append(set(ids.tolist()))
    assert len(seen[-1]) == spe * 8  # No repeats within the epoch.
    lo, hi = data.shard_bounds(len(images), p, 2)
    assert seen[-1] <= set(range(lo, hi))
  assert not seen[0] & seen[1]
  # The epoch is spe * 16 of the 1437 images: each half drops the few its shard has over.
  assert len(seen[0] | seen[1]) == spe * 16 == 1437 // 16 * 16


def test_the_2x4_checkpoint_restores_onto_8_devices_and_onto_1(run_2x4, devices):
  on_8 = _restore(run_2x4[0], STEPS, devices)
  on_1 = _restore(run_2x4[0], STEPS, devices[:1])
  assert len(on_8.params["backbone"]["conv1"]["kernel"].sharding.device_set) == 8
  assert len(on_1.params["backbone"]["conv1"]["kernel"].sharding.device_set) == 1
  assert int(on_8.step) == int(on_1.step) == STEPS
  for name in _STATE_FIELDS:
    np.testing.assert_array_equal(
      _flat(getattr(on_8, name)), _flat(getattr(on_1, name)), err_msg=name
    )


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, cache_dir):
  """One workdir through the faults, each launch the same command (checkpoints at 6, 12, 14).

  This fixture: SIGTERM to the launcher while both processes hold at batch 3 (update ~1); they
  agree to stop at step 10 (the agreement is every 10 steps) and save it. Returns
  (workdir, sync dir, launcher exit status, output).
  """
  root = tmp_path_factory.mktemp("faults")
  workdir, sync = root / "wd", root / "sync"
  sync.mkdir()
  run = _Launch(
    workdir,
    cache_dir,
    env={"SCALE_OUT_PAUSE_AT": "3", "SCALE_OUT_SYNC_DIR": str(sync)},
  )
  run.wait_for(
    lambda: (sync / "paused.0").exists() and (sync / "paused.1").exists(),
    "both processes to pause at batch 3",
  )
  run.proc.send_signal(signal.SIGTERM)
  run.wait_for(
    lambda: all(
      re.search(rf"^\[p{p}\] .*SIGTERM received", run.output(), re.MULTILINE) for p in range(2)
    ),
    "both processes to receive the forwarded SIGTERM",
    timeout=60,
  )
  (sync / "go").touch()
  code, output = run.wait()
  return workdir, sync, code, output


# Three multi-process training runs (~6 CPU-minutes): outside the CI budget, run with -m slow.
@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_both_processes_at_one_saved_step(fault_run):
  workdir, _, code, output = fault_run
  assert code == 0, output[-5000:]
  assert "launch: got SIGTERM; forwarding SIGTERM" in output
  for p in range(2):
    assert re.search(rf"^\[p{p}\] .*Stopped at step 10/14 on SIGTERM", output, re.MULTILINE), p
  assert _checkpoint_steps(workdir) == [6, 10]


# Three multi-process training runs (~6 CPU-minutes): outside the CI budget, run with -m slow.
@pytest.mark.slow
def test_sigkill_of_one_process_stops_the_run_and_the_same_command_resumes(
  fault_run, run_2x4, cache_dir, devices
):
  workdir, sync, _, _ = fault_run
  (sync / "go").unlink()
  # The rerun resumes from the SIGTERM's step 10; process 1 holds at batch 13 (after update 12 and
  # its checkpoint) and process 0 waits for it in the next step: then process 1 gets SIGKILL.
  run = _Launch(
    workdir,
    cache_dir,
    env={
      "SCALE_OUT_PAUSE_AT": "13",
      "SCALE_OUT_PAUSE_PROCESSES": "1",
      "SCALE_OUT_SYNC_DIR": str(sync),
    },
  )
  run.wait_for(
    lambda: (sync / "paused.1").exists() and 12 in _checkpoint_steps(workdir),
    "process 1 to pause after checkpoint 12",
  )
  killed_at = time.monotonic()
  os.kill(run.pids()[1], signal.SIGKILL)
  code, output = run.wait(timeout=_KILL_BOUND_S + 60)
  stopped_after = time.monotonic() - killed_at
  assert re.search(r"^\[p0\] .*Resuming from .* step 10\.", output, re.MULTILINE), output
  assert code != 0
  assert f"launch: process 1 (pid {run.pids()[1]}) was killed by SIGKILL" in output, output
  assert stopped_after < _KILL_BOUND_S, f"the run took {stopped_after:.0f}s to stop"
  assert _checkpoint_steps(workdir) == [6, 10, 12]

  output = _run_to_end(workdir, cache_dir)
  assert re.search(r"^\[p0\] .*Resuming from .* step 12\.", output, re.MULTILINE), output
  assert _checkpoint_steps(workdir) == [10, 12, 14]
  _assert_same_state(
    _restore(str(workdir), STEPS, devices), _restore(run_2x4[0], STEPS, devices), rtol=1e-6
  )


@pytest.mark.slow
def test_without_the_launcher_the_survivor_stops_on_the_heartbeat_timeout():
  """Process 1 SIGKILLed, the launcher told to wait 300 s: process 0 must stop on its own.

  It hosts the coordination service, which declares process 1 dead after
  `heartbeat_timeout_seconds` (60 s, `barlow_jax.launch.initialize`) and aborts the survivor,
  naming it.
  """
  env = dict(os.environ, PYTHONPATH=_TESTS)
  command = [
    sys.executable,
    "-m",
    "barlow_jax.launch",
    "--module=multiprocess_probe",
    "--num_processes=2",
    "--devices_per_process=2",
    "--grace_s=300",
    "--",
    "die",
  ]
  start = time.monotonic()
  result = subprocess.run(command, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=200)
  elapsed = time.monotonic() - start
  assert result.returncode != 0
  assert "launch: process 0 was killed by SIGABRT" in result.stdout, result.stdout[-3000:]
  assert "stopped sending heartbeats" in result.stdout and "[p0] 1\n" in result.stdout
  assert elapsed < 120, f"the survivor took {elapsed:.0f}s to stop"
