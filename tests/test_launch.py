"""The local launcher and the multi-process join, for real: separate processes over loopback."""

import os
import subprocess
import sys
import time

import pytest

from barlow_jax import launch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*extra: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
  # The probe from tests/, and this tree's barlow_jax (not an installed copy).
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(_ROOT, "tests"), _ROOT]))
  command = [sys.executable, "-m", "barlow_jax.launch", "--module=multiprocess_probe", *extra]
  start = time.monotonic()
  result = subprocess.run(
    command, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=timeout
  )
  return result, time.monotonic() - start


def test_two_processes_sum_a_global_array():
  result, _ = _launch("--num_processes=2", "--devices_per_process=4")
  assert result.returncode == 0, result.stdout + result.stderr
  # Process 0 holds 0..3, process 1 holds 100..103: the global sum sees all 8 devices.
  expected = sum(range(4)) + sum(100 + i for i in range(4))
  for index in range(2):
    assert f"[p{index}] process {index}/2 sum {float(expected)}" in result.stdout


def test_a_killed_process_stops_the_run_with_its_name():
  result, elapsed = _launch(
    "--num_processes=2", "--devices_per_process=2", "--grace_s=5", "--", "die"
  )
  assert result.returncode != 0
  assert "process 1 (pid" in result.stdout and "SIGKILL" in result.stdout, result.stdout
  assert elapsed < 60, f"survivors took {elapsed:.0f}s to stop"


@pytest.mark.parametrize(
  "env, match",
  [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}, "needs all three"),
    (
      {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
      "must be in",
    ),
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
  ],
)
def test_incomplete_multiprocess_settings_are_named(monkeypatch, env, match):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=match):
    launch.initialize()


def test_single_process_joins_nothing(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS"):
    monkeypatch.delenv(name, raising=False)
  assert launch.initialize() is False
