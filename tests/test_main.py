"""`python -m barlow_jax.main`: config files, locked overrides, and (slow) a whole run + resume."""

import os
import re
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "barlow_jax.main", *args],
    cwd=_ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_a_misspelt_config_key_fails_naming_it(tmp_path):
  result = _main(
    "--config=configs/digits.py:runlocal",
    "--config.optim.lr_weight=0.1",  # lr_weights
    f"--workdir={tmp_path}",
  )
  assert result.returncode != 0
  assert "lr_weight" in result.stderr, result.stderr[-2000:]
  assert not os.listdir(tmp_path)  # Failed before doing anything.


def test_an_unknown_config_argument_fails_naming_it(tmp_path):
  result = _main("--config=configs/digits.py:runfast", f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "runfast" in result.stderr, result.stderr[-2000:]


def test_the_workdir_is_required():
  result = _main("--config=configs/digits.py:runlocal")
  assert result.returncode != 0
  assert "workdir" in result.stderr


@pytest.mark.slow
def test_a_run_then_the_same_command_resumes_and_exports(tmp_path):
  args = ("--config=configs/digits.py:runlocal", f"--workdir={tmp_path}")
  first = _main(*args, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "step 20/20" in first.stderr
  assert os.path.exists(tmp_path / "backbone" / "model_config.json")
  again = _main(*args, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resuming from" in again.stderr and "step 20" in again.stderr


def _console_script() -> str:
  script = os.path.join(os.path.dirname(sys.executable), "barlow-jax")
  if not os.path.exists(script):
    pytest.skip(
      f"no barlow-jax console script next to {sys.executable}: the package is not installed in "
      "this environment (pip install -e . installs it; CI's install does)"
    )
  return script


def test_the_installed_console_script_starts_a_run(tmp_path):
  """`barlow-jax` (setup.py's entry point) parses the flags and reaches the trainer."""
  # An empty --workdir is refused by the trainer itself: the script parsed the flags and ran
  # main() through to it.
  result = subprocess.run(
    [_console_script(), "--config=configs/digits.py:runlocal", "--workdir="],
    cwd=_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0
  assert "--workdir is empty" in result.stderr, result.stderr[-3000:]


def _run_timing_lines(args: list[str], timeout: float):
  """Runs `python -m barlow_jax.main ARGS`: (exit code, [(arrival time, line)], exit time)."""
  import threading
  import time

  proc = subprocess.Popen(
    [sys.executable, "-m", "barlow_jax.main", *args],
    cwd=_ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  lines = []

  def read():
    for line in proc.stdout:
      lines.append((time.monotonic(), line.rstrip("\n")))

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  code = proc.wait(timeout=timeout)
  exited = time.monotonic()
  reader.join(timeout=10)
  return code, lines, exited


@pytest.mark.slow
def test_the_process_exits_promptly_after_the_results_table(tmp_path):
  """Issue 14, item 10: the default job spent 0-53 s after printing its table inside the
  destructor of the pretraining's tf.data iterator (TF's autotuning thread sleeping out its
  period); the iterator lives through the final evaluation here, as it does there."""
  code, lines, exited = _run_timing_lines(
    [
      "--config=tests/configs_tiny.py",
      f"--workdir={tmp_path}",
      "--config.eval.final=True",
      "--config.eval.baselines=False",
      "--config.eval.probe_epochs=30",
    ],
    timeout=600,
  )
  text = "\n".join(line for _, line in lines)
  assert code == 0, text[-3000:]
  table = [t for t, line in lines if line.startswith("Linear probe: ")]
  assert table, text[-3000:]
  # Normal teardown (results written, interpreter and XLA shut down) takes 1-7 s on a shared
  # 2-core CPU at load ~10.
  assert exited - table[-1] < 12.0, text[-1500:]


def _paused_run(workdir, sync_dir, pause_at: int) -> subprocess.Popen:
  """`tests/scale_out_worker.py` (main with a pause hook) on the tiny config, held at batch
  `pause_at` until `sync_dir/go` exists; its output goes to `workdir/../log`."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
    [_ROOT, os.path.join(_ROOT, "tests"), env.get("PYTHONPATH", "")]
  )
  env.update(
    SCALE_OUT_PAUSE_AT=str(pause_at),
    SCALE_OUT_SYNC_DIR=str(sync_dir),
    SCALE_OUT_PAUSE_PROCESSES="0",
  )
  log = open(os.path.join(sync_dir, "log"), "w")
  return subprocess.Popen(
    [
      sys.executable,
      os.path.join(_ROOT, "tests", "scale_out_worker.py"),
      "--config=tests/configs_tiny.py",
      f"--workdir={workdir}",
    ],
    cwd=_ROOT,
    env=env,
    stdout=log,
    stderr=subprocess.STDOUT,
  )


def _wait_for(path, proc, timeout: float = 300.0) -> None:
  import time

  deadline = time.monotonic() + timeout
  while not os.path.exists(path):
    assert proc.poll() is None, f"the run exited ({proc.returncode}) before pausing"
    assert time.monotonic() < deadline, f"no {path} after {timeout} s"
    time.sleep(0.1)


def test_ctrl_c_saves_and_the_same_command_resumes(tmp_path):
  """Issue 26, item 3: SIGINT is handled as SIGTERM is (a checkpoint at the step it stopped at,
  a clean exit with "rerun to resume"), and the same command then runs to the end."""
  import signal

  workdir, sync = tmp_path / "run", tmp_path / "sync"
  sync.mkdir()
  proc = _paused_run(workdir, sync, pause_at=3)
  _wait_for(sync / "paused.0", proc)
  proc.send_signal(signal.SIGINT)
  (sync / "go").write_text("")
  code = proc.wait(timeout=300)
  log = (sync / "log").read_text()
  assert code == 0, log[-3000:]
  assert "KeyboardInterrupt" not in log, log[-3000:]
  assert "SIGINT (Ctrl-C) received" in log, log[-3000:]
  stopped = re.search(r"Stopped at step (\d+)/14 on SIGINT; rerun to resume", log)
  assert stopped, log[-3000:]
  step = int(stopped.group(1))
  assert 1 <= step < 14
  assert sorted(os.listdir(workdir / "checkpoints"))[-1] == str(step)
  again = _main("--config=tests/configs_tiny.py", f"--workdir={workdir}", timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert re.search(rf"Resuming from .*step {step}\b", again.stderr), again.stderr[-3000:]
  assert "step 14/14" in again.stderr, again.stderr[-3000:]


def test_a_second_ctrl_c_exits_at_once(tmp_path):
  import signal
  import time

  workdir, sync = tmp_path / "run", tmp_path / "sync"
  sync.mkdir()
  proc = _paused_run(workdir, sync, pause_at=3)
  _wait_for(sync / "paused.0", proc)
  proc.send_signal(signal.SIGINT)
  log_path = sync / "log"
  deadline = time.monotonic() + 60
  while "SIGINT (Ctrl-C) received" not in log_path.read_text():
    assert time.monotonic() < deadline, log_path.read_text()[-3000:]
    time.sleep(0.1)
  proc.send_signal(signal.SIGINT)  # Still paused: only the second signal can end it.
  code = proc.wait(timeout=30)
  assert code == -signal.SIGINT, log_path.read_text()[-3000:]
  assert not (sync / "go").exists()
