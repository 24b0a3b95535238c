"""`python -m barlow_jax.main`: config files, locked overrides, and (slow) a whole run + resume."""

import os
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
