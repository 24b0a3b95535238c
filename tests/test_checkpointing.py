"""What a run leaves reads back on any device count: every loader and command line that reads a
workdir or a backbone directory, in processes with their own device count.

Two tiny runs of `tests/configs_tiny.py` are read: the suite's shared one (`tests/shared_run.py`,
6 steps, written on 8 devices) and one of 3 steps written on 1 device; each is read on the other
counts (1 and 2, and 8) through `tests/checkpoint_reader.py` and through
`python -m barlow_jax.evaluate`, and the values must equal those read on the device count that
wrote them. Before `barlow_jax.checkpointing` every cross-count read failed with orbax's
"Topology mismatch" (issue 14, item 1).
"""

import json
import os
import subprocess
import sys

import checkpoint_reader
import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TESTS = os.path.join(_ROOT, "tests")

STEPS = 3  # Of the run written on 1 device.
_TIMEOUT_S = 600


def _run(args: list[str], devices: int) -> subprocess.CompletedProcess:
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f] + [
    f"--xla_force_host_platform_device_count={devices}"
  ]
  env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", PYTHONPATH=_ROOT)
  result = subprocess.run(
    [sys.executable, *args], cwd=_ROOT, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  return result


@pytest.fixture(scope="module")
def written(tiny_run, tmp_path_factory) -> dict[int, str]:
  """{device count: workdir of the tiny run written on that many devices}.

  On 8: the suite's shared tiny run (tests/conftest.py), trained in a test process (8 devices).
  On 1: `python -m barlow_jax.main` of tests/configs_tiny.py in a process with one device.
  """
  workdir = str(tmp_path_factory.mktemp("written_on_1") / "wd")
  _run(
    [
      "-m",
      "barlow_jax.main",
      f"--config={os.path.join(_TESTS, 'configs_tiny.py')}",
      f"--workdir={workdir}",
      f"--config.num_train_steps={STEPS}",
    ],
    1,
  )
  return {8: tiny_run.workdir, 1: workdir}


def _read(workdirs: dict[int, str], devices: int, scratch) -> dict[int, dict[str, np.ndarray]]:
  """{writer: values} of each of `workdirs` ({writer: workdir}), all read in one process with
  `devices` devices."""
  args, targets = [], {}
  for writer, workdir in workdirs.items():
    targets[writer] = str(scratch / f"written_on_{writer}_read_on_{devices}.npz")
    args += [workdir, targets[writer]]
  _run([os.path.join(_TESTS, "checkpoint_reader.py"), *args], devices)
  out = {}
  for writer, target in targets.items():
    with np.load(target) as values:
      out[writer] = dict(values)
    assert int(out[writer].pop("device_count")) == devices
  return out


def _assert_same(read: dict, reference: dict) -> None:
  assert sorted(read) == sorted(reference)
  assert len(reference) > 100  # Every loader gave a whole tree.
  for key, value in reference.items():
    np.testing.assert_array_equal(read[key], value, err_msg=key)


@pytest.fixture(scope="module")
def read_on_1(written, tmp_path_factory) -> dict[int, dict[str, np.ndarray]]:
  """{writer: values} of both runs, read in one subprocess with 1 device: the run written on 1
  (where it was written) and the run written on 8 (on fewer devices)."""
  return _read(written, 1, tmp_path_factory.mktemp("read_on_1"))


@pytest.fixture(scope="module")
def read_where_written(written, read_on_1, tmp_path_factory) -> dict[int, dict[str, np.ndarray]]:
  """Each run read on the device count that wrote it: 8 here (conftest), 1 in a subprocess."""
  scratch = tmp_path_factory.mktemp("reference")
  return {8: checkpoint_reader.read_all(written[8], str(scratch)), 1: read_on_1[1]}


@pytest.mark.parametrize("devices", [1, 2])
def test_a_run_written_on_8_devices_reads_on_fewer(
  written, read_where_written, read_on_1, devices, tmp_path
):
  read = read_on_1[8] if devices == 1 else _read({8: written[8]}, devices, tmp_path)[8]
  _assert_same(read, read_where_written[8])


def test_a_run_written_on_1_device_reads_on_8(written, read_where_written, tmp_path, devices):
  assert len(devices) == 8
  _assert_same(checkpoint_reader.read_all(written[1], str(tmp_path)), read_where_written[1])


@pytest.mark.parametrize("writer, reader", [(8, 1), (1, 8)])
def test_the_evaluate_command_reads_a_run_of_another_device_count(
  written, read_where_written, writer, reader, tmp_path
):
  _run(
    [
      "-m",
      "barlow_jax.evaluate",
      "--config=configs/eval_linear.py:digits",
      "--config.eval.mode=knn",
      f"--config.eval.backbone={written[writer]}",
      f"--workdir={tmp_path}",
    ],
    reader,
  )
  with open(tmp_path / "results.json") as f:
    knn = json.load(f)["knn_top1"]
  assert knn == float(read_where_written[writer]["knn_top1"])
